"""Features from any layer: embeddings of image files, written to .npy or .parquet."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitsearch.errors import ConfigError, MissingFileError
from vitsearch.model.features import ImageEmbedder
from vitsearch.photos.decode import read_or_skip

log = logging.getLogger(__name__)

FORMATS = (".npy", ".parquet")


def embed_files(
    embedder: ImageEmbedder, paths: Sequence[str], batch_size: int = 16
) -> tuple[list[str], np.ndarray]:
    """(paths that decoded, their embeddings), one forward per batch; bad files are skipped."""
    kept: list[str] = []
    parts: list[np.ndarray] = []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            photo = read_or_skip(path, embedder.decode_size)
            if photo is not None:
                images.append(photo.image)
                kept.append(path)
        if images:
            parts.append(embedder.embed_images(images).vectors)
    dim = embedder.info.dim
    return kept, np.concatenate(parts) if parts else np.empty((0, dim), np.float32)


def check_features_out(out: Path) -> None:
    """What ``--out`` needs, checked before the model loads (seconds to a minute): a known
    format, its package, and a folder to write into."""
    out = Path(out).expanduser()
    if out.suffix not in FORMATS:
        raise ConfigError(f"--out must end in {' or '.join(FORMATS)}, not {out.name}")
    if out.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("writing .parquet needs pyarrow: pip install pyarrow (or use .npy)")
    if not out.parent.is_dir():
        raise MissingFileError(f"no such folder for --out: {out.parent}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name a file in it")


def write_features(out: Path, paths: Sequence[str], vectors: np.ndarray) -> list[Path]:
    """.npy: the matrix, and the paths one per line beside it (same name, .txt);
    .parquet: one row per photo with ``path`` and ``embedding`` columns."""
    out = Path(out).expanduser()
    check_features_out(out)
    if out.suffix == ".npy":
        np.save(out, vectors.astype(np.float32))
        listing = out.with_suffix(".txt")
        listing.write_text("".join(f"{path}\n" for path in paths))
        return [out, listing]
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"path": list(paths), "embedding": list(vectors.astype(np.float32))})
    pq.write_table(table, out)
    return [out]
