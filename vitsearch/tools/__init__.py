"""Tools beside the library's use cases, one module per command: ``export`` (the model to a
verified ONNX or OpenVINO export), ``finetune`` (the model on labelled folders) and ``migrate``
(a library between a home folder and PostgreSQL). They may use :mod:`vitsearch.app`; the app
never imports them."""
