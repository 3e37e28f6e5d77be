"""Loading a checkpoint: hub id or local directory, safetensors only, no remote code."""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError

from vitsearch.config import Settings
from vitsearch.errors import ConfigError, ModelNotAvailableError
from vitsearch.model.embedder import Embedder, Features
from vitsearch.model.hardware import choose_device, choose_precision
from vitsearch.records import ModelInfo

log = logging.getLogger(__name__)

# Architectures whose classifier reads the (layer-normed) CLS token, so one backbone
# pass yields both the embedding and the logits.
SUPPORTED_MODEL_TYPES = ("vit", "deit")
CHECKPOINT_FILES = ["*.json", "*.safetensors"]
HUB_PROBE_SECONDS = 3.0
FIX_HINT = "point at a local checkpoint with --model DIR or VITSEARCH_MODEL"


def load_embedder(settings: Settings) -> Embedder:
    """Load ``settings.model`` on the chosen device and precision."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(settings.threads)
    directory = resolve_checkpoint(settings.model)
    model, processor = _load_from_directory(directory, settings.model)
    device = choose_device(settings.device)
    precision = choose_precision(settings.precision, device)
    if precision == "int8":
        return _int8(settings, device)
    features = _features(settings, model.config.num_hidden_layers)
    hidden = int(model.config.hidden_size)
    info = ModelInfo(
        name=settings.model,
        fingerprint=checkpoint_fingerprint(directory) + features.tag(),
        dim=2 * hidden if features.pool == "cls+mean" else hidden,
        preprocessing=_preprocessing(processor),
    )
    log.info("loaded %s on %s (%s)", settings.model, device, precision)
    return Embedder(model, processor, info, device=device, precision=precision, features=features)


def _int8(settings: Settings, device: str) -> Embedder:
    """Torch dynamic int8 of the linear layers, checked against fp32 (cosine >= 0.99)."""
    from vitsearch.model.quantize import quantize_int8

    if device != "cpu":
        raise ConfigError("--precision int8 runs on the CPU; use --device cpu")
    return quantize_int8(load_embedder(settings.replace(precision="fp32")))


def _features(settings: Settings, layers: int) -> Features:
    if not -1 <= settings.layer <= layers:
        raise ConfigError(f"--layer must be -1 (final) or 0..{layers} for this model")
    return Features(settings.layer, settings.pool)


def resolve_checkpoint(name: str) -> Path:
    """A local directory holding the checkpoint, downloading it from the hub if needed."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if _looks_like_path(name):
        raise ModelNotAvailableError(f"no model checkpoint directory at {name}; {FIX_HINT}")
    try:
        return Path(snapshot_download(name, allow_patterns=CHECKPOINT_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise ModelNotAvailableError(
            f"model {name!r} is not cached and the Hugging Face Hub cannot be reached; {FIX_HINT}"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=CHECKPOINT_FILES))
    except Exception as exc:  # the hub's errors are many; all mean "cannot get it"
        raise ModelNotAvailableError(
            f"could not download model {name!r}: {exc}; {FIX_HINT}"
        ) from exc


def checkpoint_fingerprint(directory: Path) -> str:
    """A content hash of the weights and config: the same checkpoint anywhere hashes the same."""
    digest = hashlib.sha256()
    for file in [*sorted(directory.glob("*.safetensors")), directory / "config.json"]:
        with open(file, "rb") as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


def _load_from_directory(directory: Path, name: str):
    if not any(directory.glob("*.safetensors")):
        pickled = any(directory.glob("*.bin"))
        why = (
            "has only pickle .bin weights, which vitsearch does not load"
            if pickled
            else "has no weights"
        )
        raise ModelNotAvailableError(
            f"checkpoint {name} {why}; save it with safetensors (model.save_pretrained(dir))"
        )
    config = checked_config(directory, name)
    try:
        model_class = _model_class(config)
        model = model_class.from_pretrained(
            directory, use_safetensors=True, trust_remote_code=False
        )
        processor = transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    except (OSError, ValueError, SafetensorError) as exc:
        # SafetensorError: a truncated or damaged weights file (a download cut short)
        raise ModelNotAvailableError(f"cannot load checkpoint {name}: {exc}") from exc
    return model, processor


def checked_config(directory: Path, name: str):
    """The checkpoint's config, if it is an architecture vitsearch embeds with."""
    try:
        config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot read the config of checkpoint {name}: {exc}") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelNotAvailableError(
            f"checkpoint {name} is a {config.model_type!r} model; vitsearch supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return config


def _model_class(config):
    """With a classification head when the checkpoint has one, else the bare encoder."""
    has_head = any(arch.endswith("ForImageClassification") for arch in config.architectures or ())
    return transformers.AutoModelForImageClassification if has_head else transformers.AutoModel


def _preprocessing(processor) -> dict:
    keys = (
        "size",
        "resample",
        "do_resize",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "crop_size",
        "do_center_crop",
    )
    settings = processor.to_dict()
    return {key: _jsonable(settings[key]) for key in keys if key in settings}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, str, bool, list, type(None))) else str(value)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _hub_reachable() -> bool:
    url = urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False
