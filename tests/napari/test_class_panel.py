"""The Train widget's class panel: swatches in the class colours, click to paint, rename and add
classes in the annotation layer's metadata, never in its pixels (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_class_panel_paints_renames_and_adds_without_touching_pixels(viewer, h):
    from napari_semseg._napari._layers import KEY, layer_classes

    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    panel = w.inputs.classes
    before = np.array(strokes.data, copy=True)
    names, colors = layer_classes(strokes)
    # one swatch per class, in the class colour
    for k, (name, color) in enumerate(zip(names, colors, strict=True), start=1):
        swatch = panel.findChild(type(w.train_button), f"class_swatch_{k}")
        assert swatch is not None and color in swatch.styleSheet() and name in swatch.toolTip()
    # click a swatch: the annotation layer is selected, painting with that class
    viewer.layers.selection.active = image
    panel.findChild(type(w.train_button), "class_swatch_2").click()
    assert viewer.layers.selection.active is strokes
    assert strokes.selected_label == 2 and strokes.mode == "paint"
    # rename: the layer's metadata and features say the new name; the names field follows
    panel.rename(2, "cell interior")
    assert strokes.metadata[KEY]["class_names"][1] == "cell interior"
    assert "cell interior" in list(strokes.features["class"])
    assert "cell interior" in w.inputs.class_names.text()
    # add a class: a third name and colour, shown in the panel
    panel.findChild(type(w.train_button), "add_class").click()
    names3, colors3 = layer_classes(strokes)
    assert len(names3) == 3 and len(set(colors3)) == 3
    assert panel.findChild(type(w.train_button), "class_swatch_3") is not None
    np.testing.assert_array_equal(strokes.data, before)  # pixels untouched
    # a training plan now knows three classes, named as typed
    plan = w.inputs.plan()
    assert plan.class_names[:2] == [names[0], "cell interior"] and len(plan.class_names) == 3


def test_empty_rename_is_refused_and_no_layer_means_no_rows(viewer, h):
    from napari_semseg._napari._layers import layer_classes

    w = h.dock(viewer, "Train")
    panel = w.inputs.classes
    assert panel.layer is None and not panel.add_button.isEnabled()
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w.inputs.annotations.select(strokes)
    names = layer_classes(strokes)[0]
    panel.rename(1, "   ")
    assert layer_classes(strokes)[0] == names
