"""The SQLite library: every SQL statement of vitsearch lives here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import case, create_engine, delete, event, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from vitsearch.errors import LibraryVersionError
from vitsearch.records import (
    FailedEntry,
    Filters,
    Hit,
    ImageEntry,
    Label,
    LibraryCounts,
    ModelInfo,
    PhotoDetails,
    StoredFile,
)
from vitsearch.store.schema import (
    CUSTOM_RANK,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    Base,
    ClassifierRow,
    ClusterMemberRow,
    ClusterRow,
    EmbeddingRow,
    ImageRow,
    LabelRow,
    MapPointRow,
    Meta,
    Root,
)


def _create_derived_tables(conn) -> None:
    tables = [ClusterRow.__table__, ClusterMemberRow.__table__, MapPointRow.__table__]
    Base.metadata.create_all(conn, tables=tables)


def _index_cluster_pages(conn) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cluster_members_cluster_id")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_cluster_members_order "
        "ON cluster_members (cluster_id, score, image_id)"
    )


def _add_taught_labels(conn) -> None:
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(labels)")}
    if "source" not in columns:
        conn.exec_driver_sql("ALTER TABLE labels ADD COLUMN source VARCHAR")
    Base.metadata.create_all(conn, tables=[ClassifierRow.__table__])


def _add_phash(conn) -> None:
    """Photos indexed before get NULL: duplicates computes their hash when it needs it."""
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(images)")}
    if "phash" not in columns:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN phash INTEGER")


# Ordered migrations: version -> function(connection). Version 1 is the initial create_all.
MIGRATIONS: dict[int, Callable] = {
    2: _create_derived_tables,
    3: _index_cluster_pages,
    4: _add_taught_labels,
    5: _add_phash,
}


class Database:
    """A library database. Only the process holding the writer lock calls the write methods."""

    def __init__(self, path: Path | None) -> None:
        """``path`` None: an empty library in memory, to read a home that has none on disk."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.engine = _engine(path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ensure_schema()

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    # -- meta -------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Meta.value).where(Meta.key == key))

    def set_meta(self, **values: str) -> None:
        with self.session() as s, s.begin():
            for key, value in values.items():
                s.merge(Meta(key=key, value=value))

    def model_info(self) -> ModelInfo | None:
        raw = self.get_meta("model")
        return ModelInfo(**json.loads(raw)) if raw else None

    def record_model(self, info: ModelInfo, precision: str) -> None:
        model = {
            "name": info.name,
            "fingerprint": info.fingerprint,
            "dim": info.dim,
            "preprocessing": info.preprocessing,
        }
        self.set_meta(model=json.dumps(model), precision=precision)

    # -- roots ------------------------------------------------------------------------

    def root_id(self, path: str) -> int:
        with self.session() as s, s.begin():
            root = s.scalar(select(Root).where(Root.path == path))
            if root is None:
                root = Root(path=path, online=True, last_seen_at=time.time())
                s.add(root)
                s.flush()
            return root.id

    def set_root_online(self, root_id: int, online: bool) -> None:
        values = {"online": online} | ({"last_seen_at": time.time()} if online else {})
        with self.session() as s, s.begin():
            s.execute(update(Root).where(Root.id == root_id).values(**values))

    def roots(self) -> list[tuple[str, bool]]:
        with self.session() as s:
            return [(r.path, r.online) for r in s.scalars(select(Root).order_by(Root.path))]

    # -- files ------------------------------------------------------------------------

    def files_under(self, prefix: str) -> dict[str, StoredFile]:
        """Every file whose path starts with ``prefix`` (a folder path ending in a separator)."""
        query = select(ImageRow).where(_below(prefix))
        with self.session() as s:
            return {row.path: _stored_file(row) for row in s.scalars(query)}

    def file_at(self, path: str) -> StoredFile | None:
        with self.session() as s:
            row = s.scalar(select(ImageRow).where(ImageRow.path == path))
            return _stored_file(row) if row else None

    def indexed_with_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """Indexed images with exactly these bytes, whose embeddings copies may reuse:
        content hash -> image id."""
        found: dict[str, int] = {}
        with self.session() as s:
            for chunk in _chunks(list(set(hashes)), 500):
                query = (
                    select(ImageRow.content_hash, ImageRow.id)
                    .join(EmbeddingRow, EmbeddingRow.image_id == ImageRow.id)
                    .where(ImageRow.content_hash.in_(chunk))
                )
                found.update((content, image_id) for content, image_id in s.execute(query))
        return found

    def write_batch(
        self, entries: Sequence[ImageEntry], failures: Sequence[FailedEntry]
    ) -> list[int]:
        """Upsert embedded images and failures by path in one transaction; returns image ids.

        A handful of set-based statements per batch, not several per photo: at 1.3 ms a
        photo, per-row ORM writes were a visible share of the indexer's time."""
        now = time.time()
        with self.session() as s, s.begin():
            _touch(s)
            ids = _upsert_images(s, [_image_values(e, now) for e in entries])
            failed = _upsert_images(s, [_image_values(f, now) for f in failures])
            _forget_derived(s, ids + failed)
            _delete_where_in(s, EmbeddingRow, failed)
            if entries:
                seq = self._next_seq(s, len(entries))
                vectors = [
                    {"image_id": i, "vector": _blob(e.vector), "seq": seq + offset}
                    for offset, (i, e) in enumerate(zip(ids, entries, strict=True))
                ]
                s.execute(_upsert(EmbeddingRow, vectors[0], ["image_id"]), vectors)
                labels = self._label_rows(s, ids, [e.labels for e in entries])
                if labels:
                    s.execute(LabelRow.__table__.insert(), labels)
            return ids

    def move(self, image_id: int, path: str, root_id: int, mtime_ns: int) -> None:
        """A renamed or moved file keeps its id and embedding."""
        with self.session() as s, s.begin():
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id)
                .values(path=path, root_id=root_id, mtime_ns=mtime_ns)
            )

    def move_tree(self, source: str, dest: str, root_id: int) -> int:
        """A file or folder renamed on disk: its rows follow, ids and embeddings kept."""
        old_prefix, new_prefix = os.path.join(source, ""), os.path.join(dest, "")
        with self.session() as s, s.begin():
            _touch(s)
            moved = s.execute(
                update(ImageRow).where(ImageRow.path == source).values(path=dest, root_id=root_id)
            ).rowcount
            moved += s.execute(
                update(ImageRow)
                .where(_below(old_prefix))
                .values(
                    path=new_prefix + func.substr(ImageRow.path, len(old_prefix) + 1),
                    root_id=root_id,
                )
            ).rowcount
        return moved

    def delete_images(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self.session() as s, s.begin():
            _touch(s)
            for chunk in _chunks(ids, 500):
                s.execute(delete(LabelRow).where(LabelRow.image_id.in_(chunk)))
                s.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(chunk)))
                s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))

    def forget_root(self, path: str) -> int:
        """Remove a root and all its rows; returns how many images went."""
        with self.session() as s:
            root = s.scalar(select(Root).where(Root.path == path))
            if root is None:
                return 0
            ids = list(s.scalars(select(ImageRow.id).where(ImageRow.root_id == root.id)))
        self.delete_images(ids)
        with self.session() as s, s.begin():
            s.execute(delete(Root).where(Root.path == path))
        return len(ids)

    # -- embeddings -------------------------------------------------------------------

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

    def vector_count(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(EmbeddingRow)))

    def vector_state(self) -> tuple[int, int]:
        """(last write number, vector count): changes whenever the embeddings do."""
        with self.session() as s:
            count = s.scalar(select(func.count()).select_from(EmbeddingRow))
            return self._last_seq(s), int(count)

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
        id_chunks = _chunks(list(ids), 500) if ids is not None else [None]
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

    # -- reading results --------------------------------------------------------------

    def filtered_ids(self, filters: Filters) -> np.ndarray:
        """Ids of indexed photos that pass the folder and date filters."""
        query = select(EmbeddingRow.image_id).join(ImageRow, ImageRow.id == EmbeddingRow.image_id)
        for condition in _filter_conditions(filters):
            query = query.where(condition)
        with self.engine.connect() as conn:  # Core rows: the ORM costs 5x on 100k ids
            return np.fromiter((row[0] for row in conn.execute(query)), dtype=np.int64)

    def label_vocabulary(self) -> list[tuple[str, int, int]]:
        """(label, photos with it as top label, photos with it in their top labels)."""
        top = func.sum(case((_top_label(), 1), else_=0))
        query = (
            select(LabelRow.label, top, func.count())
            .group_by(LabelRow.label)
            .order_by(top.desc(), func.count().desc(), LabelRow.label)
        )
        with self.session() as s:
            return [(label, int(top), int(total)) for label, top, total in s.execute(query)]

    def best_with_labels(
        self, labels: Sequence[str], filters: Filters, k: int, combine: str = "max"
    ) -> list[Hit]:
        """Photos carrying any of ``labels``, ranked by the best such label's probability, or
        with ``combine="sum"`` by their summed probability (three dog breeds in a photo's top 5
        at 0.3, 0.2, 0.1: 0.6). Sums stay within one source, then the best source counts: a
        taught classifier's scores and the model's are not shares of one distribution."""
        combined = {"max": func.max, "sum": func.sum}[combine](LabelRow.score)
        per_source = (
            select(LabelRow.image_id.label("image_id"), combined.label("score"))
            .where(LabelRow.label.in_(list(labels)))
            .group_by(LabelRow.image_id, LabelRow.source)
            .subquery()
        )
        score = func.max(per_source.c.score).label("score")
        query = (
            select(per_source.c.image_id, score)
            .join(ImageRow, ImageRow.id == per_source.c.image_id)
            .group_by(per_source.c.image_id)
            .order_by(score.desc(), per_source.c.image_id)
            .limit(k)
        )
        for condition in _filter_conditions(filters):
            query = query.where(condition)
        if filters.min_score is not None:
            query = query.having(score >= filters.min_score)
        with self.session() as s:
            rows = s.execute(query).all()
        return self.hits([r[0] for r in rows], [r[1] for r in rows])

    def hits(self, ids: Sequence[int], scores: Sequence[float]) -> list[Hit]:
        """Hits in the given order, dropping ids that vanished meanwhile."""
        with self.session() as s:
            rows = {
                row.id: (row.path, online)
                for row, online in s.execute(
                    select(ImageRow, Root.online)
                    .join(Root, Root.id == ImageRow.root_id)
                    .where(ImageRow.id.in_(list(ids)))
                )
            }
            labels = self._labels(s, list(rows))
        return [
            Hit(id=i, path=rows[i][0], score=float(sc), labels=labels[i], online=rows[i][1])
            for i, sc in zip(ids, scores, strict=True)
            if i in rows
        ]

    def counts(self) -> LibraryCounts:
        with self.session() as s:
            by_status = dict(
                s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all()
            )
            vectors = s.scalar(select(func.count()).select_from(EmbeddingRow))
            offline = s.scalar(
                select(func.count())
                .select_from(ImageRow)
                .join(Root, Root.id == ImageRow.root_id)
                .where(Root.online.is_(False))
            )
        return LibraryCounts(
            images=by_status.get(STATUS_OK, 0),
            failed=by_status.get(STATUS_FAILED, 0),
            vectors=vectors,
            offline=offline,
        )

    def details(self, ids: Sequence[int]) -> dict[int, PhotoDetails]:
        query = select(ImageRow, Root.online).join(Root, Root.id == ImageRow.root_id)
        found = {}
        with self.session() as s:
            for chunk in _chunks(list(ids), 500):
                for row, online in s.execute(query.where(ImageRow.id.in_(chunk))):
                    found[row.id] = PhotoDetails(
                        row.id,
                        row.path,
                        row.size,
                        row.width,
                        row.height,
                        row.taken_at,
                        row.content_hash,
                        online,
                        row.mtime_ns,
                    )
        return found

    def exact_duplicate_groups(self) -> list[list[int]]:
        """Ids of indexed photos sharing a content hash, one list per hash."""
        hashes = (
            select(ImageRow.content_hash)
            .where(ImageRow.status == STATUS_OK, ImageRow.content_hash.is_not(None))
            .group_by(ImageRow.content_hash)
            .having(func.count() > 1)
        )
        query = (
            select(ImageRow.content_hash, ImageRow.id)
            .where(ImageRow.content_hash.in_(hashes))
            .order_by(ImageRow.content_hash, ImageRow.id)
        )
        groups: dict[str, list[int]] = {}
        with self.session() as s:
            for content, image_id in s.execute(query):
                groups.setdefault(content, []).append(image_id)
        return list(groups.values())

    def phashes(self, ids: Sequence[int] | None = None) -> dict[int, int | None]:
        """Perceptual hash (unsigned) of the given indexed photos, or of all; None if missing."""
        query = select(ImageRow.id, ImageRow.phash).where(ImageRow.status == STATUS_OK)
        id_chunks = _chunks(list(ids), 500) if ids is not None else [None]
        found = {}
        with self.engine.connect() as conn:
            for chunk in id_chunks:
                q = query if chunk is None else query.where(ImageRow.id.in_(chunk))
                found.update((key, _unsigned64(value)) for key, value in conn.execute(q))
        return found

    def taken_at(self, ids: Sequence[int]) -> dict[int, float | None]:
        found = {}
        with self.session() as s:
            for chunk in _chunks(list(ids), 500):
                query = select(ImageRow.id, ImageRow.taken_at).where(ImageRow.id.in_(chunk))
                found.update((key, value) for key, value in s.execute(query))
        return found

    # -- derived data: clusters and the map (any process may rewrite these) -----------

    def replace_clusters(
        self,
        clusters: Sequence[tuple[int, str, int, float, np.ndarray]],
        ids: np.ndarray,
        assignment: np.ndarray,
        scores: np.ndarray,
        state: dict,
    ) -> None:
        """Store a clustering: (id, name, size, cohesion, centroid) rows, each photo's cluster."""
        with self.session() as s, s.begin():
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
            rows = [
                {"image_id": int(i), "cluster_id": int(c), "score": float(sc)}
                for i, c, sc in zip(ids, assignment, scores, strict=True)
            ]
            for chunk in _chunks(rows, 5000):
                s.execute(ClusterMemberRow.__table__.insert(), chunk)
            s.merge(Meta(key="clusters", value=json.dumps(state)))

    def cluster_state(self) -> dict | None:
        raw = self.get_meta("clusters")
        return json.loads(raw) if raw else None

    def clusters(self) -> list[tuple[int, str, int, float]]:
        query = select(ClusterRow.id, ClusterRow.name, ClusterRow.size, ClusterRow.cohesion)
        with self.session() as s:
            return [tuple(row) for row in s.execute(query.order_by(ClusterRow.size.desc()))]

    def cluster_members(self, cluster_id: int, offset: int = 0, limit: int = 60) -> list[Hit]:
        """A cluster's photos, closest to its centre first (paged)."""
        query = (
            select(ClusterMemberRow.image_id, ClusterMemberRow.score)
            .where(ClusterMemberRow.cluster_id == cluster_id)
            .order_by(ClusterMemberRow.score.desc(), ClusterMemberRow.image_id)
            .offset(offset)
            .limit(limit)
        )
        with self.session() as s:
            rows = s.execute(query).all()
        return self.hits([r[0] for r in rows], [r[1] for r in rows])

    def cluster_representatives(self, per_cluster: int) -> dict[int, list[Hit]]:
        """The ``per_cluster`` photos closest to each centre, for every cluster, in one go."""
        picked: dict[int, list[tuple[int, float]]] = {}
        with self.session() as s:
            for cluster_id in s.scalars(select(ClusterRow.id)):
                query = (
                    select(ClusterMemberRow.image_id, ClusterMemberRow.score)
                    .where(ClusterMemberRow.cluster_id == cluster_id)
                    .order_by(ClusterMemberRow.score.desc(), ClusterMemberRow.image_id)
                    .limit(per_cluster)
                )
                picked[cluster_id] = [(row[0], row[1]) for row in s.execute(query)]
        every = [image_id for rows in picked.values() for image_id, _ in rows]
        hits = {hit.id: hit for hit in self.hits(every, [0.0] * len(every))}
        return {
            cluster_id: [replace(hits[i], score=float(score)) for i, score in rows if i in hits]
            for cluster_id, rows in picked.items()
        }

    def cluster_of(self, ids: Sequence[int]) -> dict[int, int]:
        found = {}
        with self.session() as s:
            for chunk in _chunks(list(ids), 500):
                query = select(ClusterMemberRow.image_id, ClusterMemberRow.cluster_id).where(
                    ClusterMemberRow.image_id.in_(chunk)
                )
                found.update((key, value) for key, value in s.execute(query))
        return found

    def top_label_counts(self, ids: Sequence[int]) -> dict[str, int]:
        """How many of ``ids`` have each label as their most likely one (taught ones too)."""
        counts: dict[str, int] = {}
        with self.session() as s:
            for chunk in _chunks(list(ids), 500):
                query = (
                    select(LabelRow.label, func.count())
                    .where(_top_label(), LabelRow.image_id.in_(chunk))
                    .group_by(LabelRow.label)
                )
                for label, count in s.execute(query):
                    counts[label] = counts.get(label, 0) + count
        return counts

    def upsert_map_points(self, ids: np.ndarray, xy: np.ndarray, state: dict | None = None) -> None:
        rows = [
            {"image_id": int(i), "x": float(p[0]), "y": float(p[1])}
            for i, p in zip(ids, xy, strict=True)
        ]
        with self.session() as s, s.begin():
            if state is not None:  # a new projection replaces every point
                s.execute(delete(MapPointRow))
                s.merge(Meta(key="map", value=json.dumps(state)))
            for chunk in _chunks(rows, 5000):
                chunk_ids = [r["image_id"] for r in chunk]
                s.execute(delete(MapPointRow).where(MapPointRow.image_id.in_(chunk_ids)))
                # a photo deleted while the projection ran has no place on the map
                present = set(
                    s.scalars(
                        select(EmbeddingRow.image_id).where(EmbeddingRow.image_id.in_(chunk_ids))
                    )
                )
                chunk = [r for r in chunk if r["image_id"] in present]
                if chunk:
                    s.execute(MapPointRow.__table__.insert(), chunk)

    def map_state(self) -> dict | None:
        raw = self.get_meta("map")
        return json.loads(raw) if raw else None

    def map_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, xy) of every photo on the map."""
        with self.session() as s:
            query = select(MapPointRow.image_id, MapPointRow.x, MapPointRow.y)
            rows = s.execute(query.order_by(MapPointRow.image_id)).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.array([(r[1], r[2]) for r in rows], dtype=np.float32).reshape(-1, 2)

    def unmapped_ids(self) -> np.ndarray:
        query = select(EmbeddingRow.image_id).where(
            EmbeddingRow.image_id.not_in(select(MapPointRow.image_id))
        )
        with self.session() as s:
            return np.fromiter(s.scalars(query), dtype=np.int64)

    # -- taught classifiers ------------------------------------------------------------

    def save_classifier(
        self,
        name: str,
        weights: bytes,
        classes: list[str],
        accuracy: float | None,
        model_fingerprint: str,
    ) -> int:
        """Store (or replace) a classifier by name; returns its id."""
        with self.session() as s, s.begin():
            row = s.scalar(select(ClassifierRow).where(ClassifierRow.name == name))
            if row is None:
                row = ClassifierRow(name=name)
                s.add(row)
            row.classes, row.weights, row.accuracy = json.dumps(classes), weights, accuracy
            row.model_fingerprint, row.created_at = model_fingerprint, time.time()
            s.flush()
            return row.id

    def classifiers(self) -> list[tuple[int, str, bytes]]:
        query = select(ClassifierRow.id, ClassifierRow.name, ClassifierRow.weights)
        with self.session() as s:
            return [tuple(row) for row in s.execute(query.order_by(ClassifierRow.name))]

    def classifier_summaries(self) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(ClassifierRow).order_by(ClassifierRow.name)).all()
            return [
                {
                    "name": r.name,
                    "classes": json.loads(r.classes),
                    "accuracy": r.accuracy,
                    "created_at": r.created_at,
                }
                for r in rows
            ]

    def remove_classifier(self, name: str) -> bool:
        with self.session() as s, s.begin():
            cid = s.scalar(select(ClassifierRow.id).where(ClassifierRow.name == name))
            if cid is None:
                return False
            s.execute(delete(LabelRow).where(LabelRow.rank == CUSTOM_RANK + cid))
            s.execute(delete(ClassifierRow).where(ClassifierRow.id == cid))
            return True

    def clear_custom_labels(self, classifier_id: int) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(LabelRow).where(LabelRow.rank == CUSTOM_RANK + classifier_id))

    def write_custom_labels(
        self, classifier_id: int, ids: Sequence[int], labels: Sequence[Label]
    ) -> None:
        rows = [
            {
                "image_id": int(i),
                "rank": CUSTOM_RANK + classifier_id,
                "label": lab.label,
                "score": lab.score,
                "source": lab.source,
            }
            for i, lab in zip(ids, labels, strict=True)
        ]
        with self.session() as s, s.begin():
            for chunk in _chunks(rows, 5000):
                s.execute(LabelRow.__table__.insert(), chunk)

    def failures(self, limit: int = 100) -> list[tuple[str, str]]:
        query = select(ImageRow.path, ImageRow.error).where(ImageRow.status == STATUS_FAILED)
        with self.session() as s:
            return [tuple(r) for r in s.execute(query.order_by(ImageRow.path).limit(limit))]

    # -- internals --------------------------------------------------------------------

    def _labels(self, s: Session, ids: list[int]) -> dict[int, tuple[Label, ...]]:
        """Each photo's labels: taught ones first (you chose them), then the model's top 5."""
        found: dict[int, list[Label]] = {i: [] for i in ids}
        custom_first = case((LabelRow.rank >= CUSTOM_RANK, 0), else_=1)
        for chunk in _chunks(ids, 500):
            query = (
                select(LabelRow.image_id, LabelRow.label, LabelRow.score, LabelRow.source)
                .where(LabelRow.image_id.in_(chunk))
                .order_by(LabelRow.image_id, custom_first, LabelRow.rank)
            )
            for image_id, label, score, source in s.execute(query):
                found[image_id].append(Label(label, score, source))
        return {i: tuple(labels) for i, labels in found.items()}

    def _label_rows(
        self, s: Session, ids: Sequence[int], labels: Sequence[Sequence[Label]]
    ) -> list[dict]:
        """Rows for each photo's labels: the model's ranked 0.., a taught one at
        CUSTOM_RANK + its classifier id (skipped if that classifier was removed meanwhile)."""
        custom = any(lab.custom for photo in labels for lab in photo)
        classifier_ids = self._classifier_ids(s) if custom else {}
        rows = []
        for image_id, photo_labels in zip(ids, labels, strict=True):
            rank = 0
            for lab in photo_labels:
                if lab.custom:
                    cid = classifier_ids.get(lab.source.removeprefix("custom:"))
                    if cid is None:
                        continue
                    row_rank = CUSTOM_RANK + cid
                else:
                    row_rank, rank = rank, rank + 1
                rows.append(
                    {
                        "image_id": image_id,
                        "rank": row_rank,
                        "label": lab.label,
                        "score": lab.score,
                        "source": lab.source,
                    }
                )
        return rows

    def _classifier_ids(self, s: Session) -> dict[str, int]:
        return {name: cid for cid, name in s.execute(select(ClassifierRow.id, ClassifierRow.name))}

    def _last_seq(self, s: Session) -> int:
        return int(s.scalar(select(Meta.value).where(Meta.key == "vector_seq")) or 0)

    def _next_seq(self, s: Session, count: int) -> int:
        """Reserve ``count`` write numbers; they never repeat, even after deletes."""
        current = self._last_seq(s)
        s.merge(Meta(key="vector_seq", value=str(current + count)))
        return current + 1

    def _ensure_schema(self) -> None:
        with self.engine.begin() as conn:
            Base.metadata.create_all(conn)
        found = self.get_meta("schema_version")
        version = int(found) if found else None
        if version is None:
            self.set_meta(schema_version=str(SCHEMA_VERSION))
            return
        if version > SCHEMA_VERSION:
            raise LibraryVersionError(
                f"the library at {self.path} was written by a newer vitsearch (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade vitsearch"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.engine.begin() as conn:
                MIGRATIONS[target](conn)
            self.set_meta(schema_version=str(target))


def _engine(path: Path | None) -> Engine:
    if path is None:  # every thread shares the one connection: it is the whole database
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def _below(prefix: str):
    """Paths starting with ``prefix`` as a range, so SQLite answers from the path index
    (a LIKE with ESCAPE scans the table: 40 ms at 100k photos against 0.003 ms)."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (ImageRow.path >= prefix) & (ImageRow.path < upper)


def _filter_conditions(filters: Filters) -> list:
    conditions = []
    if filters.under is not None:
        prefix = os.path.join(filters.under, "")
        conditions.append(_below(prefix))
    if filters.after is not None:
        conditions.append(ImageRow.taken_at >= filters.after)
    if filters.before is not None:
        conditions.append(ImageRow.taken_at < filters.before)
    return conditions


def _top_label():
    """A photo's most likely model label, or a label a taught classifier gave it."""
    return (LabelRow.rank == 0) | (LabelRow.rank >= CUSTOM_RANK)


def _forget_derived(s: Session, ids: list[int]) -> None:
    """A new (or no) vector invalidates the photos' labels, map points and cluster membership."""
    for table in (LabelRow, MapPointRow, ClusterMemberRow):
        _delete_where_in(s, table, ids)


def _delete_where_in(s: Session, table, ids: list[int]) -> None:
    for chunk in _chunks(ids, 500):
        s.execute(delete(table).where(table.image_id.in_(chunk)))


def _touch(s: Session) -> None:
    """Record when the library last changed (``status`` shows it)."""
    s.merge(Meta(key="last_commit_at", value=repr(time.time())))


def _upsert(table, example: dict, keys: list[str]):
    """INSERT .. ON CONFLICT (keys) DO UPDATE: an existing row keeps its id."""
    statement = sqlite_insert(table)
    updates = {name: statement.excluded[name] for name in example if name not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def _upsert_images(s: Session, rows: list[dict]) -> list[int]:
    """Insert or update images by path; their ids, in the order of ``rows``."""
    if not rows:
        return []
    s.execute(_upsert(ImageRow, rows[0], ["path"]), rows)
    paths = [row["path"] for row in rows]
    found: dict[str, int] = {}
    for chunk in _chunks(paths, 500):
        query = select(ImageRow.path, ImageRow.id).where(ImageRow.path.in_(chunk))
        found.update((path, image_id) for path, image_id in s.execute(query))
    return [found[path] for path in paths]


# what only a decoded photo has; a failed file leaves these empty
PHOTO_COLUMNS = ("fingerprint", "content_hash", "width", "height", "taken_at")


def _image_values(item: ImageEntry | FailedEntry, now: float) -> dict:
    """An images row; the same keys for a photo and a failure, so one statement takes both."""
    failed = isinstance(item, FailedEntry)
    return {
        "path": item.path,
        "root_id": item.root_id,
        "size": item.size,
        "mtime_ns": item.mtime_ns,
        **{column: None if failed else getattr(item, column) for column in PHOTO_COLUMNS},
        "phash": None if failed else _signed64(item.phash),
        "status": STATUS_FAILED if failed else STATUS_OK,
        "error": item.error if failed else None,
        "indexed_at": now,
    }


def _signed64(value: int | None) -> int | None:
    """An unsigned 64-bit hash as SQLite's signed INTEGER holds it."""
    return value - (1 << 64) if value is not None and value >= 1 << 63 else value


def _unsigned64(value: int | None) -> int | None:
    return value + (1 << 64) if value is not None and value < 0 else value


def _blob(vector) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _stored_file(row: ImageRow) -> StoredFile:
    return StoredFile(
        id=row.id,
        path=row.path,
        size=row.size,
        mtime_ns=row.mtime_ns,
        fingerprint=row.fingerprint,
        content_hash=row.content_hash,
        ok=row.status == STATUS_OK,
    )


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
