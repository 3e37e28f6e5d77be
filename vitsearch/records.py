"""Small frozen records passed between the layers (model -> store -> search -> cli/ui)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Label:
    label: str
    score: float

    def as_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 6)}


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


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the embeddings a model produces; recorded in the library."""

    name: str
    fingerprint: str
    dim: int
    preprocessing: dict = field(default_factory=dict)


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
    vector: object  # np.ndarray (dim,) float32
    labels: tuple[Label, ...]


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
