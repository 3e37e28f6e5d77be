"""Running a ``vitsearch export`` directory without torch or transformers: its manifest and
what every exported graph shares (:mod:`.manifest`), one leaf per runtime
(:mod:`.onnx_backend`, :mod:`.openvino_backend`; neither imports the other), and opening a
directory on the runtime its manifest names (:mod:`.loader`).

A query on a library that runs an export imports this package, never torch: making and
verifying an export, which need torch, are :mod:`vitsearch.model.pytorch.exporter`'s.
"""
