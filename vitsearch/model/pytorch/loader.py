"""Loading a checkpoint into PyTorch on the device and precision
:mod:`vitsearch.model.choice.runtime` decided: safetensors only, no remote code. Finding, checking
and fingerprinting the checkpoint is :mod:`vitsearch.model.checkpoint`'s."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError

from vitsearch.errors import ConfigError, ModelNotAvailableError
from vitsearch.model.checkpoint import (
    check_weights,
    checked_config,
    checkpoint_fingerprint,
    load_processor,
    preprocessing,
    resolve_checkpoint,
)
from vitsearch.model.features import DEFAULT_FEATURES, Features
from vitsearch.model.pytorch.embedder import Embedder
from vitsearch.model.pytorch.quantize import quantize_int8
from vitsearch.records import ModelInfo

log = logging.getLogger(__name__)


def load_embedder(
    checkpoint: str,
    *,
    threads: int,
    device: str = "cpu",
    precision: str = "fp32",
    features: Features = DEFAULT_FEATURES,
) -> Embedder:
    """Load ``checkpoint`` into PyTorch.

    Args:
        checkpoint: a hub id or a local checkpoint directory (the name a library records).
        threads: torch intra-op threads (process-wide, as torch has it).
        device: ``cpu``, ``cuda`` or ``mps``, as decided (see
            :func:`vitsearch.model.choice.runtime.choose_runtime`).
        precision: ``fp32``, ``bf16``, ``fp16``, or ``int8`` (dynamic int8 of the linear
            layers, on the CPU, checked against fp32), as decided.
        features: the layer and pooling that make the embedding.
    """
    if precision == "int8" and device != "cpu":
        raise ConfigError("--precision int8 runs on the CPU; use --device cpu")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    directory = resolve_checkpoint(checkpoint)
    model, processor = _load_from_directory(directory, checkpoint)
    _check_layer(features, model.config.num_hidden_layers)
    hidden = int(model.config.hidden_size)
    info = ModelInfo.made_with(
        checkpoint,
        checkpoint_fingerprint(directory) + features.tag(),
        2 * hidden if features.pool == "cls+mean" else hidden,
        preprocessing(processor),
    )
    loaded = "fp32" if precision == "int8" else precision
    log.info("loaded %s on %s (%s)", checkpoint, device, loaded)
    embedder = Embedder(model, processor, info, device=device, precision=loaded, features=features)
    # int8 is quantized from the fp32 model just loaded: the checkpoint is read once
    return quantize_int8(embedder) if precision == "int8" else embedder


def _check_layer(features: Features, layers: int) -> None:
    if not -1 <= features.layer <= layers:
        raise ConfigError(f"--layer must be -1 (final) or 0..{layers} for this model")


def _load_from_directory(directory: Path, name: str):
    check_weights(directory, name)
    config = checked_config(directory, name)
    try:
        model_class = _model_class(config)
        model = model_class.from_pretrained(
            directory, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, SafetensorError) as exc:
        # SafetensorError: a truncated or damaged weights file (a download cut short)
        raise ModelNotAvailableError(f"cannot load checkpoint {name}: {exc}") from exc
    return model, load_processor(directory, name)


def _model_class(config):
    """With a classification head when the checkpoint has one, else the bare encoder."""
    has_head = any(arch.endswith("ForImageClassification") for arch in config.architectures or ())
    return transformers.AutoModelForImageClassification if has_head else transformers.AutoModel
