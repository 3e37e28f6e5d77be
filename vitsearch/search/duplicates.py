"""Duplicates in three tiers people can tell apart.

- exact: byte-identical files (same content hash).
- near: the same picture resized, recompressed, lightly cropped or re-exported: cosine >= 0.95.
- burst: different shots of one moment: cosine >= 0.85 *and* taken within 30 s of each other,
  and not already near-duplicates. "Similar" is never reported as "duplicate".

How the defaults were chosen: real weights could not be downloaded where this was built, so the
thresholds come from the geometry the tests and benchmarks plant (see README, "Duplicates"),
set conservatively high; `--threshold` overrides them and the README explains how to calibrate
them on your own photos. Groups come from FAISS range search (bounded by the number of close
pairs, never O(n²) in Python) joined with union-find. Nothing is ever deleted here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitsearch.errors import ConfigError
from vitsearch.records import PhotoDetails
from vitsearch.store import Library

KINDS = ("exact", "near", "burst")
NEAR_THRESHOLD = 0.95
BURST_THRESHOLD = 0.85
BURST_SECONDS = 30.0
QUERY_CHUNK = 4096


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str
    members: tuple[PhotoDetails, ...]  # the suggested keeper first
    similarity: float  # the lowest similarity that joined the group (1.0 for exact)

    @property
    def keeper(self) -> PhotoDetails:
        return self.members[0]

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "similarity": round(self.similarity, 6),
            "keep": self.keeper.id,
            "members": [
                {
                    "id": p.id,
                    "path": p.path,
                    "size": p.size,
                    "width": p.width,
                    "height": p.height,
                    "taken_at": p.taken_at,
                    "keep": p.id == self.keeper.id,
                }
                for p in self.members
            ],
        }


def find_duplicates(
    library: Library, kinds: tuple[str, ...] = KINDS, threshold: float | None = None
) -> list[DuplicateGroup]:
    """Duplicate groups of the asked kinds, biggest first; ``threshold`` sets the kind's cut."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown duplicate kind {', '.join(sorted(unknown))}; use {KINDS}")
    if threshold is not None and len(kinds) != 1:
        raise ConfigError("--threshold needs exactly one --kind (near or burst)")
    groups: list[DuplicateGroup] = []
    if "exact" in kinds:
        groups += _groups(library, "exact", library.db.exact_duplicate_groups(), {})
    if "near" in kinds or "burst" in kinds:
        near_cut = threshold if threshold is not None and "near" in kinds else NEAR_THRESHOLD
        burst_cut = threshold if threshold is not None and "burst" in kinds else BURST_THRESHOLD
        near, burst = _similar_pairs(library, near_cut, burst_cut if "burst" in kinds else None)
        if "near" in kinds:
            groups += _groups(library, "near", _union(near), _weakest(near), drop_exact=True)
        if "burst" in kinds:
            groups += _groups(library, "burst", _union(burst), _weakest(burst))
    return sorted(groups, key=lambda g: (-len(g.members), g.kind, g.keeper.path))


def keeper_order(photo: PhotoDetails) -> tuple:
    """Largest resolution first, then the oldest, then the first indexed."""
    taken = photo.taken_at if photo.taken_at is not None else float("inf")
    return (-photo.pixels, taken, photo.id)


def _similar_pairs(library: Library, near_cut: float, burst_cut: float | None):
    """Near pairs (>= near_cut) and burst pairs (>= burst_cut, close in time, not near)."""
    lowest = min(near_cut, burst_cut) if burst_cut is not None else near_cut
    near: list[tuple[np.ndarray, ...]] = []
    burst: list[tuple[np.ndarray, ...]] = []
    vectors = library.vectors
    for ids, chunk in library.db.iter_embeddings(chunk=QUERY_CHUNK):
        a, b, score = vectors.pairs_above(ids, chunk, lowest)
        is_near = score >= near_cut
        near.append((a[is_near], b[is_near], score[is_near]))
        if burst_cut is not None and (~is_near).any():
            near_in_time = _within_seconds(library, a[~is_near], b[~is_near], BURST_SECONDS)
            burst.append(tuple(x[~is_near][near_in_time] for x in (a, b, score)))
    return _concat(near), _concat(burst)


def _within_seconds(library: Library, a: np.ndarray, b: np.ndarray, seconds: float) -> np.ndarray:
    when = library.db.taken_at(np.unique(np.concatenate([a, b])).tolist())
    t_a = np.array([when.get(int(i)) if when.get(int(i)) is not None else np.nan for i in a])
    t_b = np.array([when.get(int(i)) if when.get(int(i)) is not None else np.nan for i in b])
    with np.errstate(invalid="ignore"):
        return np.abs(t_a - t_b) <= seconds


def _union(pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return [sorted(members) for members in groups.values() if len(members) > 1]


def _weakest(pairs) -> dict[int, float]:
    """Per photo, the lowest similarity of an edge that touches it (for the group's score)."""
    weakest: dict[int, float] = {}
    for x, y, s in zip(*(p.tolist() for p in pairs), strict=True):
        for node in (x, y):
            weakest[node] = min(weakest.get(node, 1.0), s)
    return weakest


def _groups(library, kind, id_groups, weakest, drop_exact: bool = False) -> list[DuplicateGroup]:
    details = library.db.details([i for group in id_groups for i in group])
    result = []
    for group in id_groups:
        members = sorted((details[i] for i in group if i in details), key=keeper_order)
        if len(members) < 2 or (drop_exact and len({m.content_hash for m in members}) == 1):
            continue
        similarity = min((weakest.get(m.id, 1.0) for m in members), default=1.0)
        result.append(DuplicateGroup(kind, tuple(members), min(similarity, 1.0)))
    return result


def _concat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
