"""Which runtime runs the model: torch on a device and precision, or an ONNX Runtime or
OpenVINO export, as asked or the fastest agreeing candidate measured on this CPU
(:mod:`.runtime`: the choice, the timings kept in the home, and the exports it makes there).

Torch-free to import: it imports :mod:`vitsearch.model.pytorch`'s modules only when a torch
backend runs or an export has to be made (``devices`` asks torch inside its function).
"""
