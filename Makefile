# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install napari-semseg, segment the bundled sample (labels + PNG overlay)
#   make test   - also install the system libraries napari needs under Xvfb, run the static checks
#                 (make lint), then the test suite
# Override the interpreter with `make PYTHON=python3.12 ...`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_ARGS ?= -m "not slow"
SYSTEM_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 \
	libgl1 libegl1 libfontconfig1 libdbus-1-3 libglib2.0-0

.PHONY: demo test lint install system-deps clean

$(BIN)/napari-semseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/napari-semseg

demo: install
	$(BIN)/napari-semseg demo

# Xvfb and the xcb/GL libraries Qt needs (Debian/Ubuntu; skipped where Xvfb is already present).
system-deps:
	@if ! command -v Xvfb >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
			$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); \
		else echo "install Xvfb and Qt's xcb libraries with your package manager"; exit 1; fi; \
	fi

# Static checks, run before the tests: ruff (pyflakes, bugbear, complexity <= 15), mypy on
# napari_semseg.core, no function in src/ over 60 lines, no import circle in src/.
lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python scripts/check_sizes.py src
	$(BIN)/python scripts/check_imports.py src

test: lint system-deps
	env -u QT_QPA_PLATFORM $(BIN)/python -m pytest $(TEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
