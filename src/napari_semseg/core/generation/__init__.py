"""Conditional image generation: label maps in, realistic images out, tiled to any size.

- :func:`~.synthesize.synthesize` / :func:`~.synthesize.iter_synthesize`: run a generator over a
  label map of any size, chunk by chunk, to memory, zarr or TIFF;
- :func:`~.train.train_generator` / :func:`~.train.iter_train_generator`: train a generator
  from images and their label maps;
- :mod:`.model_file`: generator files (safetensors + JSON, ``"kind": "generator"``).
"""
