"""Embeddings: one float32 vector per photo, with the write numbers the FAISS cache follows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from vitsearch.records import Label
from vitsearch.store.schema import EmbeddingRow, Meta
from vitsearch.store.sql import chunks


class EmbeddingRows:
    """Mixed into :class:`~vitsearch.store.library.Library` (``session()``, ``engine``)."""

    if TYPE_CHECKING:  # given by Library and LabelRows

        @property
        def engine(self) -> Engine: ...
        def session(self) -> Session: ...
        def _labels(self, s: Session, ids: list[int]) -> dict[int, tuple[Label, ...]]: ...

    def embedding(self, image_id: int) -> tuple[np.ndarray, tuple[Label, ...]] | None:
        with self.session() as s:
            blob = s.scalar(select(EmbeddingRow.vector).where(EmbeddingRow.image_id == image_id))
            if blob is None:
                return None
            return np.frombuffer(blob, dtype=np.float32).copy(), self._labels(s, [image_id])[
                image_id
            ]

    def embedding_ids(self) -> np.ndarray:
        """Every id with a vector, ascending. Core rows, not ORM: 100k ids in a few ms."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(EmbeddingRow.image_id).order_by(EmbeddingRow.image_id))
            return np.fromiter((row[0] for row in rows), dtype=np.int64)

    def embedding_count(self) -> int:
        """Photos with a vector, counted in SQLite (the FAISS cache left alone)."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(EmbeddingRow)) or 0)

    def vector_state(self) -> tuple[int, int]:
        """(last write number, vector count): changes whenever the embeddings do."""
        with self.session() as s:
            count = s.scalar(select(func.count()).select_from(EmbeddingRow))
            return self._last_seq(s), int(count or 0)

    def max_seq(self) -> int:
        """The number of the last embedding write (deletes never lower it)."""
        with self.session() as s:
            return self._last_seq(s)

    def iter_embeddings(
        self, since_seq: int = 0, ids: Sequence[int] | None = None, chunk: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks: all, those written after ``since_seq``, or the given ids."""
        query = select(EmbeddingRow.image_id, EmbeddingRow.vector).where(
            EmbeddingRow.seq > since_seq
        )
        id_chunks = chunks(list(ids), 500) if ids is not None else [None]
        with self.session() as s:
            for id_chunk in id_chunks:
                q = query if id_chunk is None else query.where(EmbeddingRow.image_id.in_(id_chunk))
                rows = s.execute(q.execution_options(yield_per=chunk))
                for part in rows.partitions(chunk):
                    yield (
                        np.array([r[0] for r in part], dtype=np.int64),
                        np.frombuffer(b"".join(r[1] for r in part), dtype=np.float32).reshape(
                            len(part), -1
                        ),
                    )

    def embedding_seqs(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, the write number of each one's vector): what derived results were made from."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(EmbeddingRow.image_id, EmbeddingRow.seq).order_by(EmbeddingRow.image_id)
            ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))

    def seqs_of(self, ids: Sequence[int]) -> dict[int, int]:
        """id -> the write number of its vector, for those of ``ids`` that have one."""
        found: dict[int, int] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                query = select(EmbeddingRow.image_id, EmbeddingRow.seq).where(
                    EmbeddingRow.image_id.in_(chunk)
                )
                found.update((int(i), int(q)) for i, q in conn.execute(query))
        return found

    def _last_seq(self, s: Session) -> int:
        return int(s.scalar(select(Meta.value).where(Meta.key == "vector_seq")) or 0)

    def _next_seq(self, s: Session, count: int) -> int:
        """Reserve ``count`` write numbers; they never repeat, even after deletes."""
        current = self._last_seq(s)
        s.merge(Meta(key="vector_seq", value=str(current + count)))
        return current + 1
