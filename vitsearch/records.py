"""Small frozen records passed between the layers (model -> store -> search -> cli/ui)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the records themselves need no numpy
    import numpy as np

_WNID_PREFIX = re.compile(r"(n\d{8})\s+(\S.*)", re.DOTALL)


def split_wnid(label: str) -> tuple[str | None, str]:
    """("n02099712", "Labrador retriever") from "n02099712 Labrador retriever"; else (None, label).

    Checkpoints like real-vit-tiny prefix labels with their WordNet id: stored as is (it names
    the class exactly), shown without it.
    """
    match = _WNID_PREFIX.fullmatch(label.strip())
    return (match.group(1), match.group(2).strip()) if match else (None, label)


def display_label(label: str) -> str:
    """A label as people read it: without a leading WordNet id."""
    return split_wnid(label)[1]


def short_label(label: str) -> str:
    """The first synonym as written: "tabby" for "tabby, tabby cat", for cards and cluster names."""
    name = display_label(label)
    return name.split(",")[0].strip() or name


TAUGHT_SOURCE = "custom:"  # a taught label's source: this, then its classifier's name


@dataclass(frozen=True)
class Label:
    label: str
    score: float
    source: str | None = None  # None: the model's head; "custom:NAME": a taught classifier

    @property
    def custom(self) -> bool:
        return self.source is not None

    @property
    def taught_by(self) -> str | None:
        """The name of the taught classifier that gave this label (None: the model's own)."""
        return None if self.source is None else self.source.removeprefix(TAUGHT_SOURCE)

    def as_dict(self) -> dict:
        wnid, name = split_wnid(self.label)
        out = {"label": name, "score": round(self.score, 6)}
        if wnid is not None:
            out["wnid"] = wnid
        if self.source is not None:
            out["custom"] = self.taught_by
        return out


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: int
    path: str
    score: float
    labels: tuple[Label, ...] = ()
    online: bool = True

    def as_dict(self) -> dict:
        out = {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "labels": [label.as_dict() for label in self.labels],
        }
        if not self.online:
            out["offline"] = True
        return out


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 photo``, ``2 photos``, ``1 copy``, ``2 copies`` (``plural`` where not noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


# Backends whose embeddings differ from torch fp32 beyond its tolerance: each adds its own
# suffix to the fingerprint, so a library never mixes them.
OTHER_BACKENDS = ("onnx-fp32", "onnx-int8", "torch-int8", "openvino-fp32", "openvino-int8")
TORCH = "torch"
# ModelInfo.precision of torch fp32, bf16 and fp16: they agree within tolerance, so they share
# the checkpoint's fingerprint and a library built with one runs the fastest of them
AGREEING = "auto"


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the embeddings a model produces; recorded in the library.

    The library stores ``fingerprint`` (``<source>`` or ``<source>+<backend>-<precision>``, as
    it always has); ``backend`` and ``precision`` are read from it here, and only here, and
    :meth:`made_with` is the one place that writes it.
    """

    name: str
    fingerprint: str
    dim: int
    preprocessing: dict = field(default_factory=dict)
    backend: str = field(init=False)  # torch | onnx | openvino
    precision: str = field(init=False)  # fp32 | int8, or AGREEING for torch fp32/bf16/fp16

    def __post_init__(self) -> None:
        suffix = self.fingerprint.rpartition("+")[2]
        # "cls+mean" in a feature tag is no backend: only the known suffixes count
        backend, precision = suffix.split("-") if suffix in OTHER_BACKENDS else (TORCH, AGREEING)
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "precision", precision)

    @classmethod
    def made_with(
        cls,
        name: str,
        source: str,
        dim: int,
        preprocessing: dict,
        backend: str = TORCH,
        precision: str = AGREEING,
    ) -> ModelInfo:
        """The info of embeddings ``backend`` at ``precision`` makes from ``source`` (the
        checkpoint's fingerprint with its feature tag): same checkpoint, another backend, so
        a store tells them apart."""
        made_by = f"{backend}-{precision}"
        if made_by not in OTHER_BACKENDS and (backend, precision) != (TORCH, AGREEING):
            raise ValueError(f"no fingerprint for embeddings made by {made_by}")
        suffix = "" if made_by not in OTHER_BACKENDS else f"+{made_by}"
        return cls(name, source + suffix, dim, preprocessing)

    @property
    def source(self) -> str:
        """The fingerprint of the checkpoint and features, without the backend's suffix."""
        return self.fingerprint if self.made_by == TORCH else self.fingerprint.rpartition("+")[0]

    @property
    def made_by(self) -> str:
        """``torch`` (fp32, bf16 or fp16, which agree within tolerance), else
        ``<backend>-<precision>``: what `status` shows."""
        return TORCH if self.precision == AGREEING else f"{self.backend}-{self.precision}"


@dataclass(frozen=True)
class StoredFile:
    """What the store knows of one file, enough to diff it against the disk."""

    id: int
    path: str
    size: int
    mtime_ns: int
    fingerprint: str | None
    content_hash: str | None
    ok: bool


@dataclass(frozen=True)
class ImageEntry:
    """A decoded and embedded photo, ready to be written."""

    path: str
    root_id: int
    size: int
    mtime_ns: int
    fingerprint: str
    content_hash: str
    width: int
    height: int
    taken_at: float | None
    vector: np.ndarray  # (dim,) float32
    labels: tuple[Label, ...]
    phash: int | None = None  # perceptual hash (vitsearch.photos.phash), unsigned 64-bit


@dataclass(frozen=True)
class FailedEntry:
    """A file that could not be decoded; kept so it is retried only when it changes."""

    path: str
    root_id: int
    size: int
    mtime_ns: int
    error: str


@dataclass(frozen=True)
class LibraryCounts:
    images: int
    failed: int
    vectors: int
    offline: int


@dataclass(frozen=True)
class Filters:
    """Restrictions every query takes; applied inside the vector search, not after it."""

    under: str | None = None  # a folder: only photos below it
    after: float | None = None  # capture time (EXIF, else mtime), POSIX seconds, inclusive
    before: float | None = None  # exclusive
    min_score: float | None = None

    @property
    def restricts_ids(self) -> bool:
        return self.under is not None or self.after is not None or self.before is not None


NO_FILTERS = Filters()


@dataclass(frozen=True)
class PhotoDetails:
    """What a person compares between duplicates."""

    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken_at: float | None
    content_hash: str | None
    online: bool = True
    mtime_ns: int = 0

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True)
class Cluster:
    id: int
    name: str
    size: int
    cohesion: float  # mean cosine of the members to the centroid
    representatives: tuple[Hit, ...] = ()


@dataclass(frozen=True)
class TaughtClassifier:
    """A classifier taught with ``vitsearch teach``, as ``teach --list`` shows it."""

    name: str
    classes: tuple[str, ...]
    accuracy: float | None  # on held-out examples
    created_at: float


@dataclass(frozen=True)
class FolderStatus:
    path: str
    online: bool


@dataclass(frozen=True)
class LibraryStatus:
    """What ``status`` and the UI's Library page show."""

    images: int
    failed: int
    offline: int
    vectors: int
    model: str | None
    model_fingerprint: str | None
    dim: int | None
    backend: str | None
    precision: str | None
    device: str | None
    home: str
    folders: tuple[FolderStatus, ...]
    writer_pid: int | None
    last_commit_at: str | None  # ISO 8601, local time

    @property
    def empty(self) -> bool:
        return not (self.images or self.failed)

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["folders"] = [{"path": f.path, "online": f.online} for f in self.folders]
        return out


@dataclass(frozen=True)
class CopySummary:
    """What ``vitsearch migrate`` copied, and between which libraries."""

    photos: int  # rows of the images table, failed files included
    vectors: int
    labels: int
    classifiers: int
    source: str
    dest: str
