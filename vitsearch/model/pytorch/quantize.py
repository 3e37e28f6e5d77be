"""PyTorch dynamic int8 quantization of a loaded embedder's linear layers (CPU only).

The weights of every ``nn.Linear`` become int8; activations stay fp32 between layers and
are quantized per batch inside each one, so the Embedder still feeds fp32 pixels. Embeddings
are fingerprinted ``<checkpoint fingerprint>+torch-int8``: a library never mixes them with
fp32 ones silently.
"""

from __future__ import annotations

import warnings

import torch

from vitsearch.errors import ConfigError
from vitsearch.model.pytorch.embedder import Embedder
from vitsearch.model.pytorch.exporter import TOLERANCES, compare_embedders
from vitsearch.records import TORCH, ModelInfo

INT8 = "int8"


def quantize_int8(embedder: Embedder, *, check: bool = True) -> Embedder:
    """A new Embedder whose linear layers run in int8; ``embedder`` is left as it was.

    Args:
        embedder: an fp32 embedder on the cpu.
        check: compare the two on seeded probe images and refuse a result whose cosine to
            fp32 is below ``TOLERANCES["int8"]`` (a few forward passes).

    Raises:
        ConfigError: the embedder is not fp32 on the cpu, or torch lacks dynamic quantization.
        BackendMismatchError: ``check`` is on and the int8 model strays beyond the tolerance.
    """
    _check_quantizable(embedder)
    model = _quantize_linear(embedder._model)
    fp32 = embedder.info
    info = ModelInfo.made_with(
        fp32.name, fp32.source, fp32.dim, fp32.preprocessing, backend=TORCH, precision=INT8
    )
    # fp32 here is the input dtype the Embedder casts pixels to; dynamic int8 wants fp32.
    int8 = Embedder(
        model,
        embedder._processor,
        info,
        device="cpu",
        precision="fp32",
        features=embedder.features,
    )
    int8.precision = INT8
    if check:
        verification = compare_embedders(embedder, int8, TOLERANCES[INT8])
        verification.check(
            f"torch int8 of {embedder.info.name}", "use --precision fp32 or bf16 for this model"
        )
    return int8


def _check_quantizable(embedder: Embedder) -> None:
    if embedder.device != "cpu" or embedder.precision != "fp32":
        raise ConfigError(
            f"int8 quantization starts from fp32 on the cpu, not {embedder.precision} on "
            f"{embedder.device}; use --device cpu"
        )
    if torch.backends.quantized.engine == "none":
        raise ConfigError("this torch build has no quantized CPU engine; use --precision fp32")


def _quantize_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A quantized copy (``quantize_dynamic`` copies unless told ``inplace``)."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise ConfigError(
            f"torch {torch.__version__} has no torch.ao.quantization; use --precision fp32, "
            "or an int8 ONNX export (vitsearch export --format onnx --quantize int8)"
        ) from exc
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; it still ships and works, and
        # the warning is not something a user indexing photos can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
