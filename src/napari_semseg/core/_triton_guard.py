"""Load triton with RTLD_DEEPBIND before torch's compiler stack pulls it in.

With Mesa's software OpenGL (napari under Xvfb, remote desktops), importing triton *after* an
OpenGL context exists segfaults: both ship LLVM and their symbols clash. smp imports torchvision,
whose ``ops`` import ``torch._dynamo``, which imports triton. Loading triton once with
``RTLD_DEEPBIND`` makes it resolve its own LLVM symbols first. Harmless when triton is absent or on
platforms without ``RTLD_DEEPBIND``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_done = False


def preload_triton() -> None:
    """Import triton once with ``RTLD_DEEPBIND`` (Linux only), restoring the dlopen flags after."""
    global _done
    if _done:
        return
    _done = True
    if "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    if importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - a broken triton only disables torch.compile
        pass
    finally:
        sys.setdlopenflags(flags)
