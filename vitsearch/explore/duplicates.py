"""Duplicates in three tiers people can tell apart; each photo is in at most one group.

- exact: byte-identical files (same content hash).
- near: copies of one picture: resized, recompressed, re-exported, greyscale or sepia, lightly
  cropped, turned by 90 degrees with the EXIF lost, mirrored. The CLS embedding alone cannot
  tell those from another photo of the same kind of thing (on a trained ViT-Ti a greyscale copy
  scores ~0.65 to its original and two terriers of one breed as much), so a pair is a copy only
  when the photos' perceptual hashes (:mod:`vitsearch.photos.phash`, stored at indexing) agree
  too: within COPY_BITS bits in any orientation (with the embeddings at least COPY_COSINE alike),
  or within CROP_BITS with a cosine of NEAR_THRESHOLD (crops move the hash more).
- burst: different shots of one moment: cosine >= BURST_THRESHOLD and taken within 30 s.

Tiers and groups: exact beats near beats burst. A group is grown from its suggested keeper
(largest, then oldest) along the tier's pairs, with complete linkage: every two members pass the
tier's rule (for near, their hashes agreeing within CROP_BITS is enough: a greyscale and a turned
copy of one photo look far apart to the model). So no chain A~B~C joins A and C.

Candidate pairs come from FAISS: a range search on the embeddings (bounded by the number of
close pairs) and a multi-index Hamming search on the hashes (which finds turned and greyscale
copies whose embeddings are far apart). The cuts were chosen on a measured precision/recall
curve (bench_duplicates.py, docs/duplicates-and-labels.md). A photo indexed before the hash
existed gets it computed from its file when it is a cosine candidate; when the file cannot be
read, its pairs fall back to the cosine alone at COSINE_ONLY. Nothing is ever deleted here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import faiss
import numpy as np

from vitsearch.errors import ConfigError, ImageDecodeError
from vitsearch.photos import phash
from vitsearch.photos.decode import read_photo
from vitsearch.records import PhotoDetails
from vitsearch.store import Library

log = logging.getLogger(__name__)

KINDS = ("exact", "near", "burst")
COPY_BITS = 7  # hashes this close are one picture, whatever the embedding says (above COPY_COSINE)
COPY_COSINE = 0.3
CROP_BITS = 16  # a 90% crop moves ~11 bits: allowed when the embeddings agree too
NEAR_THRESHOLD = 0.8  # cosine of the crop rule; --threshold moves it
COSINE_ONLY = 0.95  # pairs with a photo whose hash is missing and whose file cannot be read
BURST_THRESHOLD = 0.85
BURST_SECONDS = 30.0
QUERY_CHUNK = 4096
HASH_TABLES, HASH_TABLE_BITS = 4, 16  # 4 tables x 16 bits, 1 flip each: exact up to 7 bits
LAZY_DRAFT = (256, 256)  # decode size for a hash computed at query time
DETAILS_CHUNK = 5000  # photos whose rows are read at once for lazy hashes


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str
    members: tuple[PhotoDetails, ...]  # the suggested keeper first
    similarity: float  # the lowest cosine of a link that joined the group (1.0 for exact)
    hash_bits: int | None = None  # near: most hash bits between two members; None: unknown

    @property
    def keeper(self) -> PhotoDetails:
        return self.members[0]

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "similarity": round(self.similarity, 6),
            "hash_bits": self.hash_bits,
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


@dataclass(frozen=True)
class _Pairs:
    """Candidate pairs a < b with their cosine and hash bits apart (-1: a hash is missing)."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray
    bits: np.ndarray


def find_duplicates(
    library: Library, kinds: tuple[str, ...] = KINDS, threshold: float | None = None
) -> list[DuplicateGroup]:
    """Duplicate groups of the asked kinds, biggest first; ``threshold`` sets the kind's cosine.

    A photo is in one group at most: exact, else near, else burst (tiers not asked for still
    take their photos, so ``--kind burst`` never shows a photo that is a near copy)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown duplicate kind {', '.join(sorted(unknown))}; use {KINDS}")
    if threshold is not None and (len(kinds) != 1 or kinds[0] == "exact"):
        raise ConfigError("--threshold needs exactly one --kind (near or burst)")
    near_cut = threshold if threshold is not None and "near" in kinds else NEAR_THRESHOLD
    # without a hash the cosine is all there is: the strict cut, unless one was asked for
    alone_cut = threshold if threshold is not None and "near" in kinds else COSINE_ONLY
    burst_cut = threshold if threshold is not None and "burst" in kinds else BURST_THRESHOLD
    exact = library.exact_duplicate_groups()
    taken = {i for group in exact for i in group}
    found: list[DuplicateGroup] = []
    if "exact" in kinds:
        found += _exact_groups(library, exact)
    if "near" in kinds or "burst" in kinds:
        pairs, hashes = _candidate_pairs(library, min(near_cut, burst_cut))
        near = pairs_where(pairs, lambda p: _is_copy(p, near_cut, alone_cut))
        near_groups = _grow(library, near, taken, _same_picture(hashes))
        if "near" in kinds:
            found += _similar_groups(library, "near", near_groups, near, hashes)
        if "burst" in kinds:
            taken |= {i for group in near_groups for i in group}
            burst = pairs_where(pairs, lambda p: _is_burst(library, p, burst_cut))
            burst_groups = _grow(library, burst, taken, lambda x, y: False)
            found += _similar_groups(library, "burst", burst_groups, burst, None)
    return sorted(found, key=lambda g: (-len(g.members), g.kind, g.keeper.path))


def keeper_order(photo: PhotoDetails) -> tuple:
    """Largest resolution first, then the oldest, then the first indexed."""
    taken = photo.taken_at if photo.taken_at is not None else float("inf")
    return (-photo.pixels, taken, photo.id)


# -- the rules ---------------------------------------------------------------------------------


def _is_copy(p: _Pairs, cosine_cut: float, alone_cut: float) -> np.ndarray:
    hashed = p.bits >= 0
    same_picture = hashed & (p.bits <= COPY_BITS) & (p.cosine >= COPY_COSINE)
    cropped = hashed & (p.bits <= CROP_BITS) & (p.cosine >= cosine_cut)
    unhashed = ~hashed & (p.cosine >= alone_cut)
    return same_picture | cropped | unhashed


def _is_burst(library: Library, p: _Pairs, cosine_cut: float) -> np.ndarray:
    close = p.cosine >= cosine_cut
    close[close] = _within_seconds(library, p.a[close], p.b[close], BURST_SECONDS)
    return close


def pairs_where(pairs: _Pairs, rule: Callable[[_Pairs], np.ndarray]) -> _Pairs:
    keep = rule(pairs)
    return _Pairs(pairs.a[keep], pairs.b[keep], pairs.cosine[keep], pairs.bits[keep])


# -- candidates --------------------------------------------------------------------------------


def _candidate_pairs(library: Library, cosine_cut: float) -> tuple[_Pairs, dict[int, int]]:
    """Pairs close in embedding (>= ``cosine_cut``) or in hash (<= COPY_BITS), scored on both;
    and the hashes known (stored, or computed now for a candidate indexed without one)."""
    found = [_cosine_pairs(library, cosine_cut)]
    hashes = library.phashes()
    known = {i: h for i, h in hashes.items() if h is not None}
    a, b = _hash_pairs(known)
    if len(a):
        found.append((a, b, _cosines(library, a, b)))
    a, b, cosine = (np.concatenate([f[k] for f in found]) for k in range(3))
    a, b, cosine = _unique(a, b, cosine)
    missing = {i for i, h in hashes.items() if h is None}
    if missing:
        known |= _lazy_hashes(library, missing & set(np.concatenate([a, b]).tolist()))
    return _Pairs(a, b, cosine, _bits(known, a, b)), known


def _cosine_pairs(library: Library, cut: float) -> tuple[np.ndarray, ...]:
    parts = []
    for ids, chunk in library.iter_embeddings(chunk=QUERY_CHUNK):
        parts.append(library.vectors.pairs_above(ids, chunk, cut))
    if not parts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _hash_pairs(hashes: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs a < b whose hashes are within COPY_BITS in some orientation (FAISS multi-index:
    4 tables of 16 bits probed with one flip find every such pair, by pigeonhole)."""
    if len(hashes) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ids = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
    values = np.array([hashes[int(i)] for i in ids], dtype=np.uint64)
    index = faiss.IndexBinaryMultiHash(phash.BITS, HASH_TABLES, HASH_TABLE_BITS)
    index.nflip = 1
    index.add(_codes(values))
    sources, targets = [], []
    for turned in phash.orientations_array(values):
        limits, _, found = index.range_search(_codes(turned), COPY_BITS + 1)  # radius: <
        sources.append(np.repeat(ids, np.diff(limits).astype(np.int64)))
        targets.append(ids[found])
    a, b = np.concatenate(sources), np.concatenate(targets)
    keep = a < b
    return a[keep], b[keep]


def _codes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values.astype("<u8")).view(np.uint8).reshape(len(values), 8)


def _cosines(library: Library, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    vectors: dict[int, np.ndarray] = {}
    for ids, chunk in library.iter_embeddings(ids=np.union1d(a, b).tolist()):
        vectors.update(zip(ids.tolist(), chunk, strict=True))
    if not vectors:
        return np.zeros(len(a), np.float32)
    return np.array(
        [float(vectors[x] @ vectors[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)],
        dtype=np.float32,
    )


def _unique(a: np.ndarray, b: np.ndarray, cosine: np.ndarray) -> tuple[np.ndarray, ...]:
    _, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return a[first], b[first], cosine[first]


def _bits(hashes: Mapping[int, int | None], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def column(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = [hashes.get(i) for i in ids.tolist()]
        known = np.array([v is not None for v in values], dtype=bool)
        return np.array([v or 0 for v in values], dtype=np.uint64), known

    (ha, known_a), (hb, known_b) = column(a), column(b)
    return np.where(known_a & known_b, phash.distances(ha, hb), -1)


def _lazy_hashes(library: Library, ids: set[int]) -> dict[int, int]:
    """Hashes of photos indexed before they existed, from their files (read-only: kept for
    this run). A file that cannot be read leaves its pairs to the cosine alone."""
    found, unreadable, ordered = {}, 0, sorted(ids)
    for start in range(0, len(ordered), DETAILS_CHUNK):  # rows in chunks: not a million at once
        for image_id, photo in library.details(ordered[start : start + DETAILS_CHUNK]).items():
            try:
                found[image_id] = phash.photo_hash(read_photo(photo.path, LAZY_DRAFT).image)
            except ImageDecodeError:
                unreadable += 1
    if unreadable:
        log.warning(
            "%d photos have no perceptual hash and their files cannot be read; their near "
            "duplicates are judged on the embedding alone (cosine >= %.2f). Re-index them "
            "with `vitsearch index` once their folder is back",
            unreadable,
            COSINE_ONLY,
        )
    return found


def _within_seconds(library: Library, a: np.ndarray, b: np.ndarray, seconds: float) -> np.ndarray:
    when = library.taken_at(np.unique(np.concatenate([a, b])).tolist())
    t_a = np.array([when.get(int(i)) if when.get(int(i)) is not None else np.nan for i in a])
    t_b = np.array([when.get(int(i)) if when.get(int(i)) is not None else np.nan for i in b])
    with np.errstate(invalid="ignore"):
        return np.abs(t_a - t_b) <= seconds


# -- groups ------------------------------------------------------------------------------------


def _same_picture(hashes: dict[int, int]) -> Callable[[int, int], bool]:
    """Whether two copies of one keeper are copies of one picture too: their hashes agree
    (within CROP_BITS), whatever their embeddings say (a greyscale and a turned copy can be
    far apart in the model's eyes)."""

    def agree(x: int, y: int) -> bool:
        hx, hy = hashes.get(x), hashes.get(y)
        return hx is not None and hy is not None and phash.distance(hx, hy) <= CROP_BITS

    return agree


def _grow(
    library: Library, pairs: _Pairs, taken: set[int], also: Callable[[int, int], bool]
) -> list[list[int]]:
    """Groups grown from each keeper in turn (largest, then oldest) along ``pairs``: a photo
    paired with a member joins when it fits with every member, paired or ``also`` (complete
    linkage), so no chain A~B~C puts A and C together when they do not fit. Photos in
    ``taken`` (a higher tier's groups) stay out."""
    neighbours: dict[int, dict[int, float]] = {}
    for x, y, s in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.cosine.tolist(), strict=True):
        if x not in taken and y not in taken:
            neighbours.setdefault(x, {})[y] = s
            neighbours.setdefault(y, {})[x] = s
    details = library.details(list(neighbours))
    order = sorted((details[i] for i in neighbours if i in details), key=keeper_order)
    used: set[int] = set()
    groups = []
    for keeper in order:
        if keeper.id not in used:
            group = _grow_one(keeper.id, neighbours, used, also)
            if len(group) > 1:
                used.update(group)
                groups.append(group)
    return groups


def _grow_one(keeper: int, neighbours, used: set[int], also) -> list[int]:
    group, refused = [keeper], set()
    while True:
        best: dict[int, float] = {}
        for member in group:
            for other, s in neighbours[member].items():
                if other not in used and other not in refused and other not in group:
                    best[other] = max(best.get(other, -1.0), s)
        if not best:
            return group
        for candidate in sorted(best, key=lambda c: (-best[c], c)):
            if all(m in neighbours[candidate] or also(candidate, m) for m in group):
                group.append(candidate)
            else:
                refused.add(candidate)


def _similar_groups(
    library: Library, kind: str, id_groups: list[list[int]], pairs: _Pairs, hashes
) -> list[DuplicateGroup]:
    cosine = {
        (x, y): s
        for x, y, s in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.cosine.tolist(), strict=True)
    }
    details = library.details([i for group in id_groups for i in group])
    result = []
    for group in id_groups:
        links = [(min(x, y), max(x, y)) for n, x in enumerate(group) for y in group[n + 1 :]]
        similarity = min(cosine[link] for link in links if link in cosine)
        members = tuple(details[i] for i in group)
        result.append(DuplicateGroup(kind, members, similarity, _most_bits(links, hashes)))
    return result


def _most_bits(links: list[tuple[int, int]], hashes: dict[int, int] | None) -> int | None:
    if hashes is None or any(hashes.get(i) is None for link in links for i in link):
        return None
    return max(phash.distance(hashes[x], hashes[y]) for x, y in links)


def _exact_groups(library: Library, id_groups: list[list[int]]) -> list[DuplicateGroup]:
    details = library.details([i for group in id_groups for i in group])
    result = []
    for group in id_groups:
        members = sorted((details[i] for i in group if i in details), key=keeper_order)
        if len(members) > 1:
            result.append(DuplicateGroup("exact", tuple(members), 1.0, 0))
    return result
