"""A small torch library moved to a faster backend of its model before a large job.

A first ``index`` of a few photos starts on torch fp32 at once, without the minute of exports
and timing (see :mod:`vitsearch.model.choice.runtime`); a library keeps the backend it was built
with, so without this a trial of 40 photos would keep a library on torch for the 10,000 that
follow, at a fifth of the speed an export reaches on some CPUs. When a job large enough to time
the backends comes to a library smaller than that, the backends are timed as for a new library,
and if another one wins, the library's few photos are embedded again by it, in place (ids, paths
and dates kept), in one transaction with the new model record.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vitsearch.indexer.reconcile import decode_file, image_entry
from vitsearch.model.features import ImageEmbedder
from vitsearch.photos.files import FileStat
from vitsearch.records import AGREEING, ImageEntry, StoredFile, counted
from vitsearch.store import Library

log = logging.getLogger(__name__)


def may_move(library: Library, photos: int, time_from: int) -> bool:
    """Whether a job of ``photos`` may move the library to another backend: a torch library
    (fp32/bf16) smaller than ``time_from`` photos and than the job, with no taught labels
    (they were fitted on its vectors), in a store that can remake its embeddings in place."""
    recorded = library.model
    if recorded is None or recorded.precision != AGREEING or not library.reembeds_in_place:
        return False
    count = library.embedding_count()
    return count < time_from and count < photos and not library.classifiers()


def move_library(
    library: Library, embedder: ImageEmbedder, batch_size: int, decode_workers: int
) -> bool:
    """Every photo of the library embedded again by ``embedder`` (another backend of its model)
    and written with the new model record; False, with nothing changed, when a photo is not on
    disk as it was indexed (offline, changed or unreadable: the library stays as it is)."""
    stored = _stored_photos(library)
    if stored is None:
        return False
    entries = _embedded_again(stored, embedder, batch_size, decode_workers)
    if entries is None:
        return False
    library.reembed(embedder.info, embedder.precision, entries)
    log.warning(
        "moved the library to %s, faster here: %s embedded again",
        embedder.info.made_by,
        counted(len(entries), "photo"),
    )
    return True


def _stored_photos(library: Library) -> list[tuple[int, FileStat]] | None:
    """(root id, the file as it is on disk) of every embedded photo; None when one of them
    is not as the library recorded it."""
    stored: list[tuple[int, FileStat]] = []
    for root, _online in library.roots():
        root_id = library.root_id(root)
        for row in library.files_under(os.path.join(root, "")).values():
            if not row.ok:
                continue
            found = _as_recorded(row)
            if found is None:
                log.info("not moving the library: %s is not as it was indexed", row.path)
                return None
            stored.append((root_id, found))
    return stored


def _as_recorded(row: StoredFile) -> FileStat | None:
    try:
        st = os.stat(row.path)
    except OSError:
        return None
    if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
        return None
    return FileStat(row.path, st.st_size, st.st_mtime_ns)


def _embedded_again(
    stored: list[tuple[int, FileStat]],
    embedder: ImageEmbedder,
    batch_size: int,
    decode_workers: int,
) -> list[ImageEntry] | None:
    entries: list[ImageEntry] = []
    with ThreadPoolExecutor(decode_workers, thread_name_prefix="vitsearch-decode") as pool:
        for start in range(0, len(stored), batch_size):
            batch = stored[start : start + batch_size]
            decoded = list(pool.map(lambda item: decode_file(item[1], embedder), batch))
            if any(item.error is not None for item in decoded):
                return None
            pixels = [item.pixels for item in decoded if item.pixels is not None]  # all
            result = embedder.embed(np.stack(pixels))
            entries += [
                image_entry(item, root_id, vector, labels)
                for (root_id, _), item, vector, labels in zip(
                    batch, decoded, result.vectors, result.labels, strict=True
                )
            ]
    return entries
