"""The static checks `make lint` runs: function sizes and import circles (scripts/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def test_check_sizes_lists_long_functions_and_methods(tmp_path, capsys):
    sizes = _script("check_sizes")
    text = (_function("short", 59) + _function("long", 60)
            + "class K:\n" + _function("method", 61, indent="    "))
    _write(tmp_path, {"pkg/m.py": text})
    assert sizes.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "m.py:61 long (61 lines > 60)" in out
    assert "K.method (62 lines > 60)" in out
    assert "short" not in out


def test_check_sizes_passes_a_tree_of_short_functions(tmp_path):
    sizes = _script("check_sizes")
    _write(tmp_path, {"pkg/m.py": _function("short", 59)})
    assert sizes.main([str(tmp_path)]) == 0


def test_check_imports_finds_a_circle_through_a_function_level_import(tmp_path, capsys):
    imports = _script("check_imports")
    _write(tmp_path, {"p/__init__.py": "", "p/sub/__init__.py": "",
                      "p/a.py": "from .sub.b import f\n",
                      "p/sub/b.py": "def f():\n    from ..a import g\n"})
    assert imports.main([str(tmp_path)]) == 1
    assert "import circle: p.a -> p.sub.b -> p.a" in capsys.readouterr().out


def test_check_imports_allows_a_package_reexporting_its_modules(tmp_path):
    imports = _script("check_imports")
    _write(tmp_path, {"p/__init__.py": "from .a import f\nfrom . import b\n",
                      "p/a.py": "import os\n\ndef f():\n    from p.b import g\n",
                      "p/b.py": "from napari_semseg.core import errors\n"})
    assert imports.main([str(tmp_path)]) == 0


def test_the_package_has_no_import_circle_and_no_long_function():
    src = SCRIPTS.parent / "src"
    assert _script("check_imports").main([str(src)]) == 0
    assert _script("check_sizes").main([str(src)]) == 0
