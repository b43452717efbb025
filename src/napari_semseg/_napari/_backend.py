"""Import the deep-learning stack once, on the main thread, when a widget is created.

Two reasons. (1) With Mesa software OpenGL (Xvfb, remote desktops) importing triton after the
viewer's OpenGL context exists segfaults unless it is loaded with RTLD_DEEPBIND first;
:func:`napari_semseg.core.models.import_smp` does that before importing segmentation-models-pytorch
(which pulls in torchvision and triton). (2) Importing these packages holds the GIL for seconds:
done inside a worker thread it would freeze the viewer in the middle of a job, so it is done
here, before any job starts (pandas too: napari imports it for the first layer with features,
which would otherwise stall the first Segment click), and the objects alive at that point are
frozen out of the garbage collector (see :func:`load_backend`). Nothing in ``_napari`` imports
smp, torchvision or timm directly.
"""

from __future__ import annotations

import atexit
import gc

_loaded = False


def load_backend() -> None:
    """Import torch, smp (after the triton guard) and the core job modules."""
    global _loaded
    if _loaded:
        return
    from ..core import models

    models.import_smp()  # preload_triton() then import segmentation_models_pytorch
    import numpy as np
    import pandas  # noqa: F401  (napari imports it on the first layer with features: 0.3 s)
    from napari.layers import Labels

    from ..core import predict, train  # noqa: F401  (the job modules)

    Labels(np.zeros((2, 2), np.uint8))  # napari's one-time colormap set-up (0.3 s) happens now
    # torch + smp + napari leave ~10^6 long-lived objects; every full garbage collection walks
    # them all (0.1-0.3 s with the GIL held, in whichever thread triggers it), which would
    # stall the viewer during a job. Collect once now and move them out of the GC's way.
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)  # let the interpreter clean them up normally at exit
    _loaded = True
