"""The instant first answer: frozen pretrained features + a light head, fitted in seconds.

- :mod:`.net`: :class:`~.net.FeatureHeadNet`, the network (architecture ``feature-head``);
- :mod:`.upsample`: the coarse-to-fine upsampling, and the same operator at single pixels;
- :mod:`.features`: feature vectors of painted pixels, window by window;
- :mod:`.fit`: the fitting job (:func:`~.fit.iter_fit_feature_head`) for the training engine;
- :mod:`.api`: :func:`~.api.fit_feature_head` for arrays and files.

Nothing is imported here: :mod:`napari_semseg.core.models` imports :mod:`.net`, and
:mod:`.fit` imports the models module.
"""
