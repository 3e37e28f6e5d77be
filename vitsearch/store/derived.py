"""Derived results (clusters, map points, the fitted map model): a cache beside the library.

They live in their own file, ``derived.sqlite3`` in the home, because readers compute them:
``vitsearch clusters`` or the UI's map may write here while a watcher commits to the library,
and the library file stays untouched. Each host of a shared library keeps its own. Every row
records the write number (``seq``) of the vector it was made from, so a photo re-embedded or
removed since drops out of the results at once; the cache is rebuilt when it is missing, of
another version, or made from another library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sqlalchemy import (
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    delete,
    select,
    union_all,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vitsearch.records import Hit
from vitsearch.store.sql import Sql, chunks

DERIVED_NAME = "derived.sqlite3"
DERIVED_VERSION = 1
CLUSTERS_PER_QUERY = 100  # SQLite allows 500 parts in one UNION ALL


class DerivedBase(DeclarativeBase):
    __table__: ClassVar[Table]  # every class here maps a Table (SQLAlchemy says FromClause)


class DerivedMeta(DerivedBase):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DerivedBlob(DerivedBase):
    """A fitted model kept with the results it places (the map's UMAP)."""

    __tablename__ = "blobs"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ClusterRow(DerivedBase):
    """A stored clustering of the library (recomputed, never edited)."""

    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(Integer)
    cohesion: Mapped[float] = mapped_column(Float)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)


class ClusterMemberRow(DerivedBase):
    __tablename__ = "cluster_members"
    image_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)  # cosine to the centroid
    seq: Mapped[int] = mapped_column(Integer)  # of the vector that was clustered
    # Pages of a cluster, closest first, straight from the index.
    __table_args__ = (Index("ix_cluster_members_order", "cluster_id", "score", "image_id"),)


class MapPointRow(DerivedBase):
    """2-D coordinates of a photo on the library map."""

    __tablename__ = "map_points"
    image_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(Integer)  # of the vector that was placed


class DerivedCache:
    """The derived results of one library, in ``home`` (in memory when ``home`` is None: a
    reader of a home with no library on disk creates no file). Opened on first use."""

    def __init__(self, home: Path | None, library_id: str) -> None:
        self.path = None if home is None else Path(home) / DERIVED_NAME
        self.library_id = library_id
        self._sql: Sql | None = None

    # -- clusters ---------------------------------------------------------------------

    def replace_clusters(
        self,
        clusters: Sequence[tuple[int, str, int, float, np.ndarray]],
        members: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        state: dict,
    ) -> None:
        """Store a clustering: (id, name, size, cohesion, centroid) rows and the members
        as (ids, cluster of each, cosine to its centroid, write number of its vector)."""
        with self._open().session() as s, s.begin():
            s.execute(delete(ClusterMemberRow))
            s.execute(delete(ClusterRow))
            s.add_all(
                ClusterRow(
                    id=cid,
                    name=name,
                    size=size,
                    cohesion=cohesion,
                    centroid=np.asarray(centroid, np.float32).tobytes(),
                )
                for cid, name, size, cohesion, centroid in clusters
            )
            s.flush()
            for start in range(0, len(members[0]), 5000):  # a million dicts at once: ~0.5 GB
                part = (m[start : start + 5000].tolist() for m in members)
                rows = [
                    {"image_id": i, "cluster_id": c, "score": sc, "seq": q}
                    for i, c, sc, q in zip(*part, strict=True)
                ]
                s.execute(ClusterMemberRow.__table__.insert(), rows)
            s.merge(DerivedMeta(key="clusters", value=json.dumps(state)))

    def cluster_state(self) -> dict | None:
        return self._state("clusters")

    def clusters(self) -> list[tuple[int, str, int, float]]:
        if not self._exists():
            return []
        query = select(ClusterRow.id, ClusterRow.name, ClusterRow.size, ClusterRow.cohesion)
        with self._open().session() as s:
            rows = s.execute(query.order_by(ClusterRow.size.desc()))
            return [(cid, name, size, cohesion) for cid, name, size, cohesion in rows]

    def cluster_members(
        self, cluster_id: int, offset: int = 0, limit: int | None = 60
    ) -> list[tuple[int, float, int]]:
        """(id, score, seq) of a cluster's photos, closest to its centre first (paged)."""
        if not self._exists():
            return []
        query = _closest_first(cluster_id).offset(offset).limit(limit)
        with self._open().session() as s:
            return [(i, score, seq) for _cluster, i, score, seq in s.execute(query)]

    def cluster_tops(self, per_cluster: int) -> dict[int, list[tuple[int, float, int]]]:
        """(id, score, seq) of every cluster's ``per_cluster`` photos closest to its centre:
        one index seek per cluster, a hundred clusters to a statement (a statement per
        cluster cost a 200-cluster page ~0.5 s in round trips alone)."""
        tops: dict[int, list[tuple[int, float, int]]] = {}
        if not self._exists():
            return tops
        with self._open().session() as s:
            for part in chunks(list(s.scalars(select(ClusterRow.id))), CLUSTERS_PER_QUERY):
                firsts = [select(_closest_first(c).limit(per_cluster).subquery()) for c in part]
                for cluster, i, score, seq in s.execute(union_all(*firsts)):
                    tops.setdefault(cluster, []).append((i, score, seq))
        for members in tops.values():  # a UNION ALL promises no order
            members.sort(key=lambda row: (-row[1], row[0]))
        return tops

    def membership(self, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """id -> (its cluster, the write number of the vector clustered)."""
        found: dict[int, tuple[int, int]] = {}
        if not self._exists():
            return found
        with self._open().session() as s:
            for chunk in chunks(list(ids), 500):
                query = select(
                    ClusterMemberRow.image_id, ClusterMemberRow.cluster_id, ClusterMemberRow.seq
                ).where(ClusterMemberRow.image_id.in_(chunk))
                found.update((i, (c, q)) for i, c, q in s.execute(query))
        return found

    # -- the map ----------------------------------------------------------------------

    def upsert_map_points(
        self, ids: np.ndarray, xy: np.ndarray, seqs: np.ndarray, state: dict | None = None
    ) -> None:
        """Place photos; with ``state``, a new projection that replaces every point."""
        rows = [
            {"image_id": int(i), "x": float(p[0]), "y": float(p[1]), "seq": int(q)}
            for i, p, q in zip(ids, xy, seqs, strict=True)
        ]
        with self._open().session() as s, s.begin():
            if state is not None:
                s.execute(delete(MapPointRow))
                s.merge(DerivedMeta(key="map", value=json.dumps(state)))
            for chunk in chunks(rows, 5000):
                chunk_ids = [r["image_id"] for r in chunk]
                s.execute(delete(MapPointRow).where(MapPointRow.image_id.in_(chunk_ids)))
                s.execute(MapPointRow.__table__.insert(), chunk)

    def map_state(self) -> dict | None:
        return self._state("map")

    def map_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, xy, seqs) of every placed photo, by id."""
        rows: Sequence[Any] = []
        if self._exists():
            query = select(MapPointRow.image_id, MapPointRow.x, MapPointRow.y, MapPointRow.seq)
            with self._open().session() as s:
                rows = s.execute(query.order_by(MapPointRow.image_id)).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        xy = np.array([(r[1], r[2]) for r in rows], dtype=np.float32).reshape(-1, 2)
        return ids, xy, np.array([r[3] for r in rows], dtype=np.int64)

    def save_blob(self, key: str, data: bytes) -> None:
        with self._open().session() as s, s.begin():
            s.merge(DerivedBlob(key=key, data=data))

    def load_blob(self, key: str) -> bytes | None:
        if not self._exists():
            return None
        with self._open().session() as s:
            return s.scalar(select(DerivedBlob.data).where(DerivedBlob.key == key))

    def drop_blob(self, key: str) -> None:
        if self._exists():
            with self._open().session() as s, s.begin():
                s.execute(delete(DerivedBlob).where(DerivedBlob.key == key))

    # -- the file ---------------------------------------------------------------------

    def close(self) -> None:
        if self._sql is not None:
            self._sql.close()
            self._sql = None

    def _state(self, key: str) -> dict | None:
        if not self._exists():
            return None
        with self._open().session() as s:
            raw = s.scalar(select(DerivedMeta.value).where(DerivedMeta.key == key))
        return json.loads(raw) if raw else None

    def _exists(self) -> bool:
        return self._sql is not None or self.path is None or self.path.exists()

    def _open(self) -> Sql:
        if self._sql is None:
            sql = Sql(self.path)
            with sql.engine.begin() as conn:
                DerivedBase.metadata.create_all(conn)
            if sql.get_meta("version") != str(DERIVED_VERSION) or (
                sql.get_meta("library_id") != self.library_id
            ):
                _start_over(sql, self.library_id)
            self._sql = sql
        return self._sql


class DerivedResults:
    """Mixed into :class:`~vitsearch.store.library.Library`: the derived cache's results
    for the photos as they are now (a row made from an older vector of a photo, or from a
    photo since removed, is left out)."""

    derived: DerivedCache

    if TYPE_CHECKING:  # given by EmbeddingRows and PhotoRows

        def embedding_seqs(self) -> tuple[np.ndarray, np.ndarray]: ...
        def seqs_of(self, ids: Sequence[int]) -> dict[int, int]: ...
        def hits(self, ids: Sequence[int], scores: Sequence[float]) -> list[Hit]: ...

    def cluster_state(self) -> dict | None:
        return self.derived.cluster_state()

    def clusters(self) -> list[tuple[int, str, int, float]]:
        """(id, name, size, cohesion) of the stored clusters, largest first."""
        return self.derived.clusters()

    def replace_clusters(
        self,
        clusters: Sequence[tuple[int, str, int, float, np.ndarray]],
        ids: np.ndarray,
        assignment: np.ndarray,
        scores: np.ndarray,
        state: dict,
    ) -> None:
        """Store a clustering: (id, name, size, cohesion, centroid) rows, each photo's cluster."""
        ids, seqs, keep = self._current(ids)
        members = (ids, np.asarray(assignment)[keep], np.asarray(scores)[keep], seqs)
        self.derived.replace_clusters(clusters, members, state)

    def cluster_members(self, cluster_id: int, offset: int = 0, limit: int = 60) -> list[Hit]:
        """A cluster's photos, closest to its centre first (paged)."""
        return self._valid_hits(self.derived.cluster_members(cluster_id, offset, limit))

    def cluster_representatives(self, per_cluster: int) -> dict[int, list[Hit]]:
        """The ``per_cluster`` photos closest to each centre, for every cluster."""
        tops = self.derived.cluster_tops(per_cluster)
        every = [row for rows in tops.values() for row in rows]
        hits = {hit.id: hit for hit in self._valid_hits(every)}
        return {
            cluster: [hits[i] for i, _score, _seq in rows if i in hits]
            for cluster, rows in tops.items()
        }

    def cluster_of(self, ids: Sequence[int]) -> dict[int, int]:
        found = self.derived.membership(ids)
        current = self.seqs_of(list(found))
        return {i: cluster for i, (cluster, seq) in found.items() if current.get(i) == seq}

    def map_state(self) -> dict | None:
        return self.derived.map_state()

    def map_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, xy) of every photo placed on the map, by id."""
        ids, xy, seqs = self.derived.map_points()
        valid = self._placed(ids, seqs)
        return ids[valid], xy[valid]

    def unmapped_ids(self) -> np.ndarray:
        """Photos with a vector but no place on the map made from it."""
        ids, _xy, seqs = self.derived.map_points()
        now = self.embedding_seqs()  # one read of the table serves both sides
        placed = ids[self._placed(ids, seqs, now)]
        return np.setdiff1d(now[0], placed, assume_unique=True)

    def upsert_map_points(self, ids: np.ndarray, xy: np.ndarray, state: dict | None = None) -> None:
        """Place photos (those removed meanwhile have no place); with ``state``, a new
        projection that replaces every point."""
        ids, seqs, keep = self._current(ids)
        self.derived.upsert_map_points(ids, np.asarray(xy)[keep], seqs, state)

    def _current(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the ids that still have a vector, its write number, which of ``ids`` they are)."""
        ids = np.asarray(ids, dtype=np.int64)
        current = self.seqs_of(ids.tolist())
        keep = np.array([int(i) in current for i in ids], dtype=bool)
        seqs = np.array([current[int(i)] for i in ids[keep]], dtype=np.int64)
        return ids[keep], seqs, keep

    def _placed(
        self,
        ids: np.ndarray,
        seqs: np.ndarray,
        now: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Which stored points were made from the vector their photo has now (``now``: the
        library's (ids, write numbers), read here when not given)."""
        now_ids, now_seqs = self.embedding_seqs() if now is None else now
        if not len(now_ids):
            return np.zeros(len(ids), dtype=bool)
        at = np.minimum(np.searchsorted(now_ids, ids), len(now_ids) - 1)
        return (now_ids[at] == ids) & (now_seqs[at] == seqs)

    def _valid_hits(self, rows: list[tuple[int, float, int]]) -> list[Hit]:
        current = self.seqs_of([row[0] for row in rows])
        valid = [(i, score) for i, score, seq in rows if current.get(i) == seq]
        return self.hits([i for i, _ in valid], [score for _, score in valid])


def _closest_first(cluster_id: int):
    """A cluster's members, closest to its centre first (the order of its index)."""
    member = ClusterMemberRow
    return (
        select(member.cluster_id, member.image_id, member.score, member.seq)
        .where(member.cluster_id == cluster_id)
        .order_by(member.score.desc(), member.image_id)
    )


def _start_over(sql: Sql, library_id: str) -> None:
    """Another version's cache, or another library's (the home's library was made anew)."""
    with sql.engine.begin() as conn:
        DerivedBase.metadata.drop_all(conn)
        DerivedBase.metadata.create_all(conn)
    sql.set_meta(version=str(DERIVED_VERSION), library_id=library_id)
