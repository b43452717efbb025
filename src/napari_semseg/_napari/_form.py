"""Qt editors for fields of the settings dataclasses (same names, same help as API and CLI).

``SettingsForm(PredictSettings, ["tile", "overlap", ...])`` builds one editor per field, named
after the field, with the field's ``help`` as tooltip. Optional numbers show "auto" at 0.
``form.values()`` returns the overrides for ``PredictSettings(**values)``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

LIMITS: dict[str, tuple[float, float, float]] = {  # name: (max, step, default-if-set)
    "tile": (16384, 32, 512),
    "overlap": (1024, 32, 64),
    "batch_size": (256, 1, 1),
    "epochs": (10000, 1, 10),
    "time_budget": (86400.0, 10.0, 60.0),
    "steps_per_epoch": (10000, 10, 50),
    "patch_size": (2048, 32, 256),
    "learning_rate": (1.0, 1e-4, 1e-3),
    "encoder_depth": (5, 1, 5),
    "tta": (8, 1, 1),
}
MINIMUM: dict[str, int] = {"tta": 1}


class SettingsForm(QWidget):
    """Editors for ``names`` of the dataclass ``cls``, laid out as a form."""

    def __init__(self, cls: type, names: list[str], labels: dict[str, str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cls = cls
        self.editors: dict[str, QWidget] = {}
        self._optional: set[str] = set()
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        spec = {f.name: f for f in fields(cls)}
        defaults = cls()
        for name in names:
            f = spec[name]
            default = getattr(defaults, name)
            kind = str(f.type)
            optional = "None" in kind
            if "bool" in kind:
                editor: QWidget = QCheckBox()
                editor.setChecked(bool(default))
            elif "float" in kind:
                editor = QDoubleSpinBox()
                top, step, _ = LIMITS.get(name, (1e9, 1.0, 1.0))
                editor.setDecimals(4 if step < 0.01 else 1)
                editor.setRange(0.0, float(top))
                editor.setSingleStep(step)
                editor.setValue(float(default or 0.0))
            elif "int" in kind:
                editor = QSpinBox()
                top, step, _ = LIMITS.get(name, (10**6, 1, 1))
                editor.setRange(MINIMUM.get(name, 0), int(top))
                editor.setSingleStep(int(step))
                editor.setValue(int(default or 0))
            elif "str" in kind:
                editor = QLineEdit("" if default is None else str(default))
                if optional:
                    editor.setPlaceholderText("auto")
            else:
                raise TypeError(f"no editor for {name}: {kind}")
            if optional and isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                editor.setSpecialValueText("auto" if name not in ("time_budget", "epochs")
                                           else "none")
            if optional:
                self._optional.add(name)
            editor.setObjectName(name)
            editor.setToolTip(f.metadata.get("help", ""))
            layout.addRow((labels or {}).get(name, name.replace("_", " ")), editor)
            self.editors[name] = editor

    def values(self) -> dict[str, Any]:
        """Field values (``None`` for optional numbers left at "auto"/"none")."""
        out: dict[str, Any] = {}
        for name, editor in self.editors.items():
            if isinstance(editor, QCheckBox):
                out[name] = editor.isChecked()
            elif isinstance(editor, QLineEdit):
                text = editor.text().strip()
                out[name] = text if text or name not in self._optional else None
            else:
                value = editor.value()
                out[name] = None if (name in self._optional and value == 0) else value
        return out

    def set(self, **values: Any) -> None:
        """Set editors by field name (``None`` -> auto)."""
        for name, value in values.items():
            editor = self.editors[name]
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, QLineEdit):
                editor.setText("" if value is None else str(value))
            else:
                editor.setValue(0 if value is None else value)
