"""The widgets' settings editors come from the settings metadata: range, step, choices, help."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("cls_name", ["PredictSettings", "TrainSettings"])
def test_editors_follow_the_field_metadata(qtbot, cls_name):
    from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

    from napari_semseg._napari._form import FLOAT_TOP, INT_TOP, SettingsForm
    from napari_semseg.core import settings

    cls = getattr(settings, cls_name)
    specs = settings.option_fields(cls)
    form = SettingsForm(cls, list(specs))
    qtbot.addWidget(form)
    for name, spec in specs.items():
        editor, option = form.editors[name], spec.option
        assert editor.objectName() == name and editor.toolTip() == spec.help
        if spec.type is bool:
            assert isinstance(editor, QCheckBox)
        elif option.choices:
            assert isinstance(editor, QComboBox)
            assert [editor.itemText(i) for i in range(editor.count())] == list(option.choices)
        elif spec.type is str:
            assert isinstance(editor, QLineEdit)
        else:
            assert isinstance(editor, QDoubleSpinBox if spec.type is float else QSpinBox)
            top = option.maximum if option.maximum is not None else option.widget_maximum
            assert editor.maximum() == (top if top is not None else
                                        FLOAT_TOP if spec.type is float else INT_TOP), name
            assert editor.minimum() == (0 if spec.optional else option.minimum or 0), name
            assert editor.singleStep() == (option.step or option.multiple_of or 1), name
            assert bool(editor.specialValueText()) == spec.optional, name
    # an untouched form gives the defaults; optional numbers at 0 mean "auto"
    assert cls(**form.values()) == cls()


def test_widget_limits_come_from_the_metadata(qtbot):
    """The values the old hand-written table gave the editors, now read from the metadata."""
    from napari_semseg._napari._form import SettingsForm
    from napari_semseg.core.settings import PredictSettings, TrainSettings

    seg = SettingsForm(PredictSettings, ["tile", "overlap", "batch_size", "tta"])
    train = SettingsForm(TrainSettings, ["time_budget", "epochs", "encoder_depth",
                                         "steps_per_epoch", "patch_size", "learning_rate"])
    for form in (seg, train):
        qtbot.addWidget(form)
    e = {**seg.editors, **train.editors}
    assert (e["tile"].maximum(), e["tile"].singleStep()) == (16384, 32)
    assert (e["overlap"].maximum(), e["overlap"].singleStep()) == (1024, 32)
    assert (e["tta"].minimum(), e["tta"].maximum()) == (1, 8)
    assert e["encoder_depth"].maximum() == 5 and e["encoder_depth"].specialValueText() == "auto"
    assert (e["time_budget"].maximum(), e["time_budget"].singleStep()) == (86400.0, 10.0)
    assert e["time_budget"].specialValueText() == "none" == e["epochs"].specialValueText()
    assert (e["patch_size"].minimum(), e["patch_size"].singleStep()) == (32, 32)
    assert e["learning_rate"].decimals() == 4 and e["learning_rate"].maximum() == 1.0
