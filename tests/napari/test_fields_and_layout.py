"""Layer fields that do what users mean, docks that fit a laptop screen, a plot headline that
shows the model kept. Viewer first, plugin second, as users do."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.gui

KEY = "napari_semseg"


def _result_layer(viewer, like, name="EM labels"):
    """A layer as the Segment widget makes it (every pixel labelled, marked as a result)."""
    data = np.ones(like.data.shape, np.uint8)
    return viewer.add_labels(data, name=name, metadata={KEY: {
        "role": "labels", "source": "x", "complete": True,
        "class_names": ["membrane", "interior"]}})


def test_image_field_follows_a_new_and_the_selected_image(viewer, h):
    first = viewer.add_image(np.zeros((64, 64), np.float32), name="first")
    w = h.dock(viewer, "Segment")
    assert w.image.layer() is first
    second = viewer.add_image(np.ones((64, 64), np.float32), name="second")
    assert w.image.layer() is second  # a newly opened image is the one to segment
    viewer.layers.selection.active = first
    assert w.image.layer() is first  # so is the one selected in the layer list
    viewer.layers.selection.active = viewer.add_labels(np.zeros((64, 64), np.uint8))
    assert w.image.layer() is first  # a Labels layer does not change the image field


def test_results_are_not_followed_as_images(viewer, h):
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="cells")
    w = h.dock(viewer, "Segment")
    viewer.add_image(np.zeros((64, 64), np.uint8), name="cells uncertainty",
                     metadata={KEY: {"role": "uncertainty", "source": "x"}})
    assert w.image.layer() is image


def test_annotations_field_leaves_out_the_plugins_results(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    w.inputs.class_names.setText("membrane, interior")
    result = _result_layer(viewer, strokes)
    viewer.layers.selection.active = result
    assert w.inputs.annotations.layer() is strokes  # not switched to the result
    assert w.inputs.class_names.text() == "membrane, interior"
    items = [w.inputs.annotations.itemText(i) for i in range(w.inputs.annotations.count())]
    assert items[0] == strokes.name and "napari-semseg result" in items[-1]
    # removing the strokes does not fall onto the result either
    viewer.layers.remove(strokes)
    assert w.inputs.annotations.layer() is None


def test_a_result_chosen_explicitly_trains_with_a_warning(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    result = _result_layer(viewer, strokes)
    w.inputs.image.select(image)
    w.inputs.annotations.select(result)
    plan = w.inputs.plan()
    assert plan.notes and "result of napari-semseg" in plan.notes[0]
    assert "annotations" in plan.notes[0]  # names the field to change


def test_class_names_disagreeing_with_the_model_are_not_replaced_silently(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    strokes.metadata[KEY] = {**strokes.metadata.get(KEY, {}), "class_names": ["edge", "cell"]}
    bundled = [c for c in w.inputs.base_model.choices() if c[0] == "file"]
    assert bundled, "the bundled EM model is offered"
    w.inputs.base_model.select(bundled[0])
    plan = w.inputs.plan()
    assert any("differ from the model's" in n and "edge" in n for n in plan.notes), plan.notes


def test_plot_headline_and_status_show_the_best_model_kept_and_no_nan(viewer, h):
    w = h.dock(viewer, "Train")
    p = w.progress

    def event(step, loss, miou=None, epoch_end=False):
        return SimpleNamespace(step=step, loss=loss, epoch=1, epoch_end=epoch_end,
                               metrics={"mean_iou": miou} if miou is not None else None,
                               eta=None, total_steps=None, elapsed=1.0, model=None)

    p.show(event(0, float("nan")))
    assert "nan" not in w.status.text()
    p.show(event(10, 0.5, 0.571, epoch_end=True))
    p.show(event(20, 0.4, 0.400, epoch_end=True))
    assert p.plot.best_iou() == pytest.approx(0.571)
    assert "best 0.571" in w.status.text()
    shot = p.plot.grab()  # the headline is painted without error
    assert not shot.isNull()


def test_docks_fit_a_1366x768_screen(viewer, h, tmp_path):
    """Both docks open, advanced settings unfolded: the window stays at laptop size and the
    docks scroll instead of forcing it to grow."""
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    window.resize(1366, 768)
    viewer.open_sample("napari-semseg", "em_training")
    seg = h.dock(viewer, "Segment")
    train = h.dock(viewer, "Train")
    from qtpy.QtWidgets import QGroupBox

    advanced = train.findChild(QGroupBox, "advanced_box")
    advanced.setChecked(True)
    assert not train.inputs.advanced.isHidden()
    for _ in range(20):
        QApplication.processEvents()
    window.resize(1366, 768)
    for _ in range(20):
        QApplication.processEvents()
    assert window.width() <= 1366 and window.height() <= 768, window.size()
    for dock in (seg, train):
        assert dock.minimumSizeHint().height() < 400, dock.minimumSizeHint()
    plot_box = train.findChild(QGroupBox, "plot_box")
    plot_box.setChecked(False)
    assert train.progress.plot.isHidden()
    shot = viewer.screenshot(path=str(tmp_path / "laptop.png"), canvas_only=False, flash=False)
    assert shot.shape[0] <= 768 and shot.shape[1] <= 1366, shot.shape
    assert shot[..., :3].std() > 5


def test_threads_is_an_advanced_training_field(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    assert w.inputs.plan().settings.threads is None  # "auto": chosen while training
    w.inputs.advanced.set(threads=1)
    assert w.inputs.plan().settings.threads == 1


def _tiny_model(training):
    import torch

    from napari_semseg import build_model

    torch.manual_seed(0)
    model = build_model("unet", "resnet18", in_channels=1, classes=2, encoder_depth=3,
                        decoder_channels=(32, 16, 8), class_names=["membrane", "interior"])
    model.metadata.training = training
    return model


def test_a_single_class_model_gets_a_visible_warning_with_what_to_do(viewer, h, notifications):
    w = h.dock(viewer, "Train")
    w.name_field.setText("my membranes")
    model = _tiny_model({"best_metrics": {"mean_iou": 0.26, "recall/membrane": 1.0,
                                          "recall/interior": 0.0}})
    w.runner._keep(model, 30.0)
    text = w.status.text()
    assert "predicts only 'membrane'" in text and "paint more of class 'interior'" in text
    assert any("paint more" in str(n.message) for n in notifications.all)
    assert w.model_name == "my membranes"  # the name typed for the trained model


def test_a_sound_model_gets_no_warning(viewer, h):
    w = h.dock(viewer, "Train")
    model = _tiny_model({"best_metrics": {"mean_iou": 0.8, "recall/membrane": 0.9,
                                          "recall/interior": 0.9}})
    w.runner._keep(model, 30.0)
    assert "Warning" not in w.status.text() and "best val mIoU 0.800" in w.status.text()
