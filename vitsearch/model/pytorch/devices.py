"""The device to run on, asked of torch (imported only then: a library that runs an export,
or ``--device cpu``, never needs it)."""

from __future__ import annotations

from vitsearch.errors import ConfigError


def choose_device(requested: str) -> str:
    if requested == "cpu":  # no need to import torch (seconds) to know that
        return "cpu"
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but torch sees no MPS device")
    return requested
