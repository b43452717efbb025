"""The GUI-free engine: models, IO, tiling, prediction, training, augmentation, metrics.

Nothing under ``napari_semseg.core`` imports napari, Qt or magicgui (a test asserts it).
"""
