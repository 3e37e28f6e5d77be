"""Settings: the one home of configuration.

Precedence: defaults < ``VITSEARCH_*`` environment variables < command-line flags.
No other module reads environment variables; they receive a :class:`Settings`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from vitsearch.errors import ConfigError

DEFAULT_MODEL = "google/vit-base-patch16-224"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
ADAPT_THREADS = 0  # watch_threads: follow the machine's load
BACKENDS = ("auto", "torch", "onnx", "openvino")
POOLS = ("cls", "mean", "cls+mean")
STORE_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Every knob of vitsearch, each with a default and help text."""

    home: Path = _setting(
        Path(platformdirs.user_data_dir("vitsearch")),
        "Directory holding the library (SQLite database, FAISS index); with a store URL, "
        "this host's own files (thumbnails, exports, the derived cache).",
    )
    store: str = _setting(
        "",
        "Where the library lives: empty for the SQLite database in the home, or a PostgreSQL "
        "URL (postgresql://user@host/db, pgvector installed) shared by several hosts.",
    )
    model: str = _setting(
        DEFAULT_MODEL, "Hugging Face model id or a local checkpoint directory (safetensors)."
    )
    device: str = _setting("auto", "Device for the model: auto (cuda > mps > cpu), cpu, cuda, mps.")
    precision: str = _setting(
        "auto",
        "Model precision: auto (chosen with the backend; for torch fp16 on CUDA, bf16 on CPUs "
        "with bf16 hardware), fp32, bf16, fp16, int8.",
    )
    layer: int = _setting(
        -1,
        "Encoder layer whose tokens make the embedding: -1 the final output, 0..N hidden states.",
    )
    pool: str = _setting("cls", "Token pooling for the embedding: cls, mean or cls+mean.")
    backend: str = _setting(
        "auto",
        "auto (the fastest within tolerance for this hardware; a library keeps its own), torch, "
        "onnx (ONNX Runtime), or openvino (OpenVINO; auto times its int8 where installed).",
    )
    time_backends_from: int = _setting(
        500,
        "index/watch: with backend auto, time the backends (and make their exports) only for a "
        "job of this many photos or more; a smaller one starts at once on the fastest measured, "
        "else torch fp32.",
    )
    batch_size: int = _setting(16, "Images per model forward pass.")
    threads: int = _setting(
        available_cores(), "Torch intra-op threads. Lower it when other work shares the CPU."
    )
    watch_threads: int = _setting(
        0,
        "watch: torch threads of the background indexer; 0 adapts: every core while the "
        "machine is otherwise idle, one fewer while another process keeps a core busy.",
    )
    decode_workers: int = _setting(
        2, "Threads decoding photos: ahead of the model when it leaves a core free."
    )
    index_save_seconds: float = _setting(
        300.0,
        "During a long run, write the FAISS file at most this often (always at the end).",
    )
    watch_quiet_seconds: float = _setting(
        2.0, "watch: a file is indexed once its size and mtime were stable this long."
    )
    watch_rescan_seconds: float = _setting(
        300.0, "watch: walk all folders this often to repair missed events (stat only)."
    )
    ray: str = _setting(
        "",
        "index: embed on the Ray cluster at this address (HOST:PORT, or auto for the one this "
        "machine runs); empty runs on this machine. The server extra installs Ray.",
    )
    ray_gpu_batch_size: int = _setting(
        64, "index --ray: images per forward on a GPU actor (a CPU actor uses batch_size)."
    )
    debug: bool = _setting(False, "Show tracebacks instead of one-line errors.")

    def replace(self, **overrides: Any) -> Settings:
        """A copy with the given non-None overrides applied and validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return _validated(dataclasses.replace(self, **given))


def env_var(name: str) -> str:
    return f"VITSEARCH_{name.upper()}"


def settings_help() -> dict[str, str]:
    """Setting name -> help text, for docs and ``--help``."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``VITSEARCH_*`` variables that rebuild ``settings`` in a child process."""
    return {env_var(f.name): str(getattr(settings, f.name)) for f in dataclasses.fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Build settings from defaults, then ``VITSEARCH_*`` variables, then flags (non-None)."""
    environ = os.environ if environ is None else environ
    from_env = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_var(f.name))
        if raw not in (None, ""):
            from_env[f.name] = _parse(f, raw)
    return Settings().replace(**from_env).replace(**flags)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind: type = type(f.default)
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind in (int, float):
            return kind(raw)
        if issubclass(kind, Path):
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{env_var(f.name)}={raw!r} is not a valid {kind.__name__}") from None


def _validated(settings: Settings) -> Settings:
    if settings.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {settings.device!r}")
    if settings.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {settings.backend!r}")
    if settings.pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, not {settings.pool!r}")
    if settings.precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, not {settings.precision!r}"
        )
    for name in ("batch_size", "threads", "decode_workers"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
    if settings.watch_threads < ADAPT_THREADS:
        raise ConfigError("watch-threads must be 0 (adapt to the machine) or at least 1")
    if settings.store and not settings.store.startswith(STORE_SCHEMES):
        raise ConfigError(
            "store must be empty (the home's SQLite) or a postgresql:// URL, "
            f"not {settings.store!r}"
        )
    # Path("postgresql://u@h/db") is "postgresql:/u@h/db": a folder nobody meant
    if str(settings.home).startswith(tuple(scheme.rstrip("/") for scheme in STORE_SCHEMES)):
        raise ConfigError(
            f"--home {settings.home} looks like a database URL: a home is a folder; "
            "for a PostgreSQL library use --store URL"
        )
    home = Path(settings.home).expanduser()
    return dataclasses.replace(settings, home=home)
