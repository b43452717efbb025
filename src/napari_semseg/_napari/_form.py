"""Qt editors for fields of the settings dataclasses (same names, same help as API and CLI).

``SettingsForm(PredictSettings, ["tile", "overlap", ...])`` builds one editor per field, named
after the field, with the field's ``help`` as tooltip and the range, step and choices of its
metadata (:func:`napari_semseg.core.settings.option_fields`). Optional numbers show "auto" (or
"none") at 0. ``form.values()`` returns the overrides for ``PredictSettings(**values)``.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from ..core.settings import OptionField, option_fields

INT_TOP = 10**6  # editor maximum of an integer field without maximum or widget_maximum
FLOAT_TOP = 1e9
NONE_TEXT = {"time_budget": "none", "epochs": "none"}  # what 0 means there; elsewhere "auto"


def _top(spec: OptionField, fallback: float) -> float:
    option = spec.option
    if option.maximum is not None:
        return option.maximum
    return option.widget_maximum if option.widget_maximum is not None else fallback


def _bottom(spec: OptionField) -> float:
    """0 for optional numbers (shown as "auto"/"none"), else the field's minimum."""
    minimum = spec.option.minimum
    return 0 if spec.optional or minimum is None else minimum


def _decimals(*values: float | None) -> int:
    """Decimals that show every value exactly (at least 1): 1e-4 -> 4, 0.15 -> 2, 120 -> 1."""
    digits = [len(f"{v:.10f}".rstrip("0").split(".")[1]) for v in values if v]
    return max([1, *digits])


def _number_editor(spec: OptionField) -> QWidget:
    step = spec.option.step or spec.option.multiple_of or 1
    if spec.type is float:
        editor: QSpinBox | QDoubleSpinBox = QDoubleSpinBox()
        editor.setDecimals(_decimals(step, spec.default))
        editor.setRange(float(_bottom(spec)), float(_top(spec, FLOAT_TOP)))
        editor.setSingleStep(float(step))
        editor.setValue(float(spec.default or 0.0))
    else:
        editor = QSpinBox()
        editor.setRange(int(_bottom(spec)), int(_top(spec, INT_TOP)))
        editor.setSingleStep(int(step))
        editor.setValue(int(spec.default or 0))
    if spec.optional:
        editor.setSpecialValueText(NONE_TEXT.get(spec.name, "auto"))
    return editor


def _text_editor(spec: OptionField) -> QWidget:
    if spec.option.choices:
        combo = QComboBox()
        combo.addItems(spec.option.choices)
        combo.setCurrentText(str(spec.default))
        return combo
    editor = QLineEdit("" if spec.default is None else str(spec.default))
    if spec.optional:
        editor.setPlaceholderText("auto")
    return editor


def make_editor(spec: OptionField) -> QWidget:
    """The editor of one field: check box, spin box, drop-down (choices) or text."""
    if spec.type is bool:
        editor: QWidget = QCheckBox()
        editor.setChecked(bool(spec.default))
    elif spec.type in (int, float):
        editor = _number_editor(spec)
    elif spec.type is str:
        editor = _text_editor(spec)
    else:
        raise TypeError(f"no editor for {spec.name}: {spec.type}")
    editor.setObjectName(spec.name)
    editor.setToolTip(spec.help)
    return editor


class SettingsForm(QWidget):
    """Editors for ``names`` of the dataclass ``cls``, laid out as a form."""

    def __init__(self, cls: type, names: list[str], labels: dict[str, str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cls = cls
        self.specs = {name: option_fields(cls)[name] for name in names}
        self.editors: dict[str, QWidget] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for name, spec in self.specs.items():
            self.editors[name] = make_editor(spec)
            layout.addRow((labels or {}).get(name, name.replace("_", " ")), self.editors[name])

    def values(self) -> dict[str, Any]:
        """Field values (``None`` for optional fields left at "auto"/"none")."""
        return {name: self._value(name, editor) for name, editor in self.editors.items()}

    def _value(self, name: str, editor: QWidget) -> Any:
        optional = self.specs[name].optional
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QComboBox):
            return editor.currentText()
        if isinstance(editor, QLineEdit):
            text = editor.text().strip()
            return text if text or not optional else None
        value = editor.value()
        return None if (optional and value == 0) else value

    def set(self, **values: Any) -> None:
        """Set editors by field name (``None`` -> auto)."""
        for name, value in values.items():
            editor = self.editors[name]
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, QComboBox):
                editor.setCurrentText(str(self.specs[name].option.from_switch(value)))
            elif isinstance(editor, QLineEdit):
                editor.setText("" if value is None else str(value))
            else:
                editor.setValue(0 if value is None else value)
