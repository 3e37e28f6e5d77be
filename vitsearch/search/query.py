"""Nearest-neighbour queries. The embedder is passed in; the library is opened by the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitsearch.errors import ImageDecodeError, MissingFileError, NotIndexedError
from vitsearch.model.features import ImageEmbedder
from vitsearch.photos.decode import decode_untrusted, read_photo
from vitsearch.records import NO_FILTERS, Filters, Hit, Label
from vitsearch.store import Library


def search_by_image(
    library: Library,
    embedder: ImageEmbedder,
    image: Path,
    k: int = 10,
    filters: Filters = NO_FILTERS,
) -> list[Hit]:
    """The k indexed photos nearest to any image file, best first."""
    vector, _labels = embed_file(embedder, image)
    return nearest(library, vector, k, filters)


def search_by_bytes(
    library: Library,
    embedder: ImageEmbedder,
    data: bytes,
    k: int = 10,
    filters: Filters = NO_FILTERS,
) -> tuple[tuple[Label, ...], list[Hit]]:
    """An uploaded image (never written to disk): its labels and its k nearest photos."""
    image, *_ = decode_untrusted(data, embedder.decode_size)
    result = embedder.embed_images([image])
    return result.labels[0], nearest(library, result.vectors[0], k, filters)


def similar_to(
    library: Library, path: Path, k: int = 10, filters: Filters = NO_FILTERS
) -> list[Hit]:
    """The k photos most like an indexed one, excluding itself."""
    stored = library.file_at(str(Path(path).expanduser().absolute()))
    if stored is None or not stored.ok:
        raise NotIndexedError(f"{path} is not in the library; index its folder first")
    return similar_to_id(library, stored.id, k, filters)


def similar_to_id(
    library: Library, image_id: int, k: int = 10, filters: Filters = NO_FILTERS
) -> list[Hit]:
    """The k photos most like the indexed photo ``image_id``, excluding itself."""
    found = library.embedding(image_id)
    if found is None:
        raise NotIndexedError(f"photo {image_id} is not in the library any more")
    hits = nearest(library, found[0], k + 1, filters)
    return [hit for hit in hits if hit.id != image_id][:k]


def classify(embedder: ImageEmbedder, images: list[Path]) -> list[tuple[str, tuple[Label, ...]]]:
    """The model's top labels for each image file."""
    return [(str(image), embed_file(embedder, image)[1]) for image in images]


def nearest(
    library: Library, vector: np.ndarray, k: int, filters: Filters = NO_FILTERS
) -> list[Hit]:
    """The k nearest photos that pass ``filters``, best first."""
    allowed = library.allowed_ids(filters) if filters.restricts_ids else None
    ids, scores = library.vectors.search(vector, k, allowed)
    # An approximate index probes only some lists; a narrow filter can leave them short.
    # (len(allowed) last: in PostgreSQL it fetches every id under the filter, ~60x the search)
    if allowed is not None and len(ids) < k and len(ids) < len(allowed):
        ids, scores = _exact_among(library, vector, k, allowed)
    if filters.min_score is not None:
        keep = scores >= filters.min_score
        ids, scores = ids[keep], scores[keep]
    return library.hits(ids.tolist(), scores.tolist())


def _exact_among(
    library: Library, vector: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    best_ids, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    for ids, vectors in library.iter_embeddings(ids=allowed.tolist()):
        ids = np.concatenate([best_ids, ids])
        scores = np.concatenate([best_scores, vectors @ vector.astype(np.float32)])
        order = np.argsort(-scores, kind="stable")[:k]
        best_ids, best_scores = ids[order], scores[order]
    return best_ids, best_scores


def embed_file(embedder: ImageEmbedder, image: Path) -> tuple[np.ndarray, tuple[Label, ...]]:
    """Decode an image file exactly as the indexer does and embed it."""
    if not Path(image).is_file():
        raise MissingFileError(f"no such image file: {image}")
    try:
        photo = read_photo(str(image), embedder.decode_size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"cannot use {image}: {exc}") from exc
    result = embedder.embed_images([photo.image])
    return result.vectors[0], result.labels[0]
