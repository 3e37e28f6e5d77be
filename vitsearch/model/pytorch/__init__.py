"""The model in PyTorch: loading a checkpoint (:mod:`.loader`) into an :class:`.embedder.Embedder`,
the device torch offers (:mod:`.devices`), dynamic int8 (:mod:`.quantize`), fine-tuning
(:mod:`.finetune`), and exporting to ONNX or OpenVINO and verifying the export against torch fp32
(:mod:`.exporter`).

Every module here imports torch or transformers, so nothing here is imported by the
package: ``vitsearch.model`` names them lazily and :mod:`vitsearch.model.choice` imports them
only when a torch backend runs or an export has to be made. ``devices`` alone imports torch
inside its function (the backend choice asks it for the device).
"""
