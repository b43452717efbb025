"""Tiled, out-of-core prediction, in layers that import downwards only.

Data flow per plane: plan a stride-aligned tile grid (:mod:`.plan`); read tile batches in a
background thread, only the window of each tile (:mod:`.reading`, :mod:`.pipeline`); normalize
with the model's statistics and run the network on the device (mixed precision and
channels_last on GPU, test-time augmentation), multiply the softmax by the tile's blending
weights there (:mod:`.tile_predictor`); cut each tile into the output chunks it covers; when a
chunk has received all its tiles, finish it (argmax, uint8 probabilities, entropy), hand it to
the sink and forget it (:mod:`.chunks`). No full-resolution float array ever exists: between
chunks only the blending bands (``overlap`` pixels wide) of the tiles already computed are kept,
about one band per row of tiles.

On a GPU the next batch is launched before the previous one is post-processed (the device never
waits for the CPU), host buffers are pinned and copies non-blocking; a CUDA out-of-memory error
halves the batch, then the tile, and the run continues.

Drivers: :mod:`.local` (this process) and :mod:`.distributed` (a dask cluster, whose tasks run
:mod:`.worker`), both over the same :func:`.chunks.compute_chunks`; :mod:`.api` holds
:func:`segment` and :func:`iter_segment`. Import from :mod:`napari_semseg.core.predict`.
"""
