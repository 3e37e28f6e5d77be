"""A checkpoint: where it is, whether vitsearch can load it, its fingerprint and its image
processor; what loading (:mod:`.pytorch.loader`) and fine-tuning (:mod:`.pytorch.finetune`) share.

Importing this module costs no torch, no transformers and no weights read: the first load of a
model may export it to ONNX and time backends (a minute for a ViT-B), so commands call
:func:`check_checkpoint` first, from file names and config.json alone, and load the model only
when there are photos to embed. transformers and huggingface_hub are imported by the functions
that need them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from vitsearch.errors import ModelNotAvailableError

if TYPE_CHECKING:
    import transformers

# Architectures whose classifier reads the (layer-normed) CLS token, so one backbone
# pass yields both the embedding and the logits.
SUPPORTED_MODEL_TYPES = ("vit", "deit")
MANIFEST_FILE = "vitsearch-export.json"  # beside every vitsearch export (see exported/manifest.py)
EXPORT_MODEL_FILES = ("model.onnx", "model.xml")
FIX_HINT = "point at a local checkpoint with --model DIR or VITSEARCH_MODEL"
CHECKPOINT_FILES = "config.json and model.safetensors (and preprocessor_config.json)"
HUB_FILES = ["*.json", "*.safetensors"]  # what is downloaded of a hub checkpoint
HUB_PROBE_SECONDS = 3.0


def check_checkpoint(name: str) -> None:
    """Raise :class:`ModelNotAvailableError` when ``name`` cannot be a loadable model.

    A local directory must be a checkpoint (config.json of a supported architecture,
    safetensors weights, the image processor's config) or a ``vitsearch export``. A hub id
    is checked in the local cache when it is there; one not cached passes (the loader
    downloads it) unless the Hub is switched off with ``HF_HUB_OFFLINE``.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        check_directory(path, name)
    elif _looks_like_path(name):
        raise ModelNotAvailableError(f"no model checkpoint directory at {name}; {FIX_HINT}")
    else:
        _check_hub_id(name)


def check_directory(directory: Path, name: str) -> None:
    if (directory / MANIFEST_FILE).is_file():
        return  # a vitsearch export: loading it reads and checks its manifest
    exported = [file for file in EXPORT_MODEL_FILES if (directory / file).is_file()]
    if exported:
        raise ModelNotAvailableError(
            f"{name} holds {exported[0]} but not {MANIFEST_FILE}: a vitsearch export missing "
            f"its manifest; export it again with: vitsearch export --out {name}"
        )
    if not (directory / "config.json").is_file():
        raise ModelNotAvailableError(
            f"{name} is not a model checkpoint: a checkpoint folder holds {CHECKPOINT_FILES}; "
            f"{FIX_HINT}"
        )
    _check_config(directory / "config.json", name)
    check_weights(directory, name)
    if not (directory / "preprocessor_config.json").is_file():
        raise ModelNotAvailableError(
            f"checkpoint {name} has no preprocessor_config.json; save the image processor "
            "beside the model (processor.save_pretrained(dir))"
        )


def _check_config(path: Path, name: str) -> None:
    try:
        config = json.loads(path.read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotAvailableError(f"cannot read the config of checkpoint {name}: {exc}") from exc
    _check_model_type(model_type, name)


def _check_model_type(model_type: str | None, name: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelNotAvailableError(
            f"checkpoint {name} is a {model_type!r} model; vitsearch supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def check_weights(directory: Path, name: str) -> None:
    """Safetensors weights only: vitsearch never unpickles a checkpoint."""
    if any(directory.glob("*.safetensors")):
        return
    why = (
        "has only pickle .bin weights, which vitsearch does not load"
        if any(directory.glob("*.bin"))
        else "has no weights (model.safetensors)"
    )
    raise ModelNotAvailableError(
        f"checkpoint {name} {why}; save it with safetensors (model.save_pretrained(dir))"
    )


def _check_hub_id(name: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as exc:  # not a valid repo id
        raise ModelNotAvailableError(f"{name!r} is not a model id or folder; {FIX_HINT}") from exc
    if isinstance(cached, str):
        check_directory(Path(cached).parent, name)
    elif constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(
            f"model {name!r} is not cached and the Hugging Face Hub is off (HF_HUB_OFFLINE); "
            f"{FIX_HINT}"
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


# --- resolving and reading a checkpoint (what loading and fine-tuning share) ---------------


def resolve_checkpoint(name: str) -> Path:
    """A local directory holding the checkpoint, downloading it from the hub if needed."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if _looks_like_path(name):
        raise ModelNotAvailableError(f"no model checkpoint directory at {name}; {FIX_HINT}")
    # imported here, for a hub id only: the cheap checks above run before any model work,
    # and huggingface_hub takes a third of a second to import
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise ModelNotAvailableError(
            f"model {name!r} is not cached and the Hugging Face Hub cannot be reached; {FIX_HINT}"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as exc:  # the hub's errors are many; all mean "cannot get it"
        raise ModelNotAvailableError(
            f"could not download model {name!r}: {exc}; {FIX_HINT}"
        ) from exc


def checkpoint_fingerprint(directory: Path) -> str:
    """A content hash of the weights and config: the same checkpoint anywhere hashes the same.

    Hashed once per process while the files keep their size and mtime: a ViT-B's weights
    take a third of a second to hash, and one load asks for the fingerprint more than once
    (the export's folder, its timings, the embedder's record).
    """
    files = [*sorted(directory.glob("*.safetensors")), directory / "config.json"]
    return _hashed(tuple(files), tuple(_stat(file) for file in files))


def _stat(file: Path) -> tuple[int, int]:
    try:
        stat = file.stat()
    except OSError:
        return (-1, -1)  # hashing it says what is wrong
    return (stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _hashed(files: tuple[Path, ...], _stats: tuple[tuple[int, int], ...]) -> str:
    """The fingerprint of ``files``; ``_stats`` (their sizes and mtimes) keys the cache."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(functools.partial(handle.read, 1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


def checked_config(directory: Path, name: str) -> transformers.PretrainedConfig:
    """The checkpoint's config, if it is an architecture vitsearch embeds with."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot read the config of checkpoint {name}: {exc}") from exc
    _check_model_type(config.model_type, name)
    return config


def load_processor(directory: Path, name: str, fix: str = "") -> transformers.BaseImageProcessor:
    """The image processor saved in ``directory`` (a checkpoint or an export), on PIL: the one
    place vitsearch loads one, so every backend preprocesses alike."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"cannot load the image processor of {name}: {exc}{fix}"
        ) from exc


PREPROCESSING_KEYS = (
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


def preprocessing(processor: transformers.BaseImageProcessor) -> dict:
    """The processor's settings a library records (JSON-able), so a change of them shows."""
    settings = processor.to_dict()
    return {key: _jsonable(settings[key]) for key in PREPROCESSING_KEYS if key in settings}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, str, bool, list, type(None))) else str(value)


def _hub_reachable() -> bool:
    from huggingface_hub import constants as hub_constants

    url = urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False
