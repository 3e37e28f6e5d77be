"""Is ``--model`` something vitsearch can load? Answered from file names and config.json alone.

No torch, no transformers, no weights read: the first load of a model may export it to ONNX
and time backends (a minute for a ViT-B), so commands check this first and load the model
only when there are photos to embed. The loader still checks everything else when it loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitsearch.errors import ModelNotAvailableError

# kept equal to loader.SUPPORTED_MODEL_TYPES and onnx_backend.MANIFEST_FILE by a test: those
# modules import torch, which this one must not
SUPPORTED_MODEL_TYPES = ("vit", "deit")
MANIFEST_FILE = "vitsearch-export.json"
EXPORT_MODEL_FILES = ("model.onnx", "model.xml")
FIX_HINT = "point at a local checkpoint with --model DIR or VITSEARCH_MODEL"
CHECKPOINT_FILES = "config.json and model.safetensors (and preprocessor_config.json)"


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
    _check_weights(directory, name)
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
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelNotAvailableError(
            f"checkpoint {name} is a {model_type!r} model; vitsearch supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _check_weights(directory: Path, name: str) -> None:
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
