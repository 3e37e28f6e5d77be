"""Labels: the model's top labels per photo and taught classifiers with their labels."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, case, delete, func, select
from sqlalchemy.orm import Session

from vitsearch.records import Filters, Hit, Label
from vitsearch.store.photos import filter_conditions
from vitsearch.store.schema import CUSTOM_RANK, ClassifierRow, ImageRow, LabelRow
from vitsearch.store.sql import chunks


class LabelRows:
    """Mixed into :class:`~vitsearch.store.library.Library` (``session()``, ``engine``)."""

    if TYPE_CHECKING:  # given by Library and PhotoRows

        def session(self) -> Session: ...
        def hits(self, ids: Sequence[int], scores: Sequence[float]) -> list[Hit]: ...

    def label_vocabulary(self) -> list[tuple[str, int, int]]:
        """(label, photos with it as top label, photos with it in their top labels)."""
        top = func.sum(case((top_label(), 1), else_=0))
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
        aggregates: dict[str, Callable[..., ColumnElement]] = {"max": func.max, "sum": func.sum}
        combined = aggregates[combine](LabelRow.score)
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
        for condition in filter_conditions(filters):
            query = query.where(condition)
        if filters.min_score is not None:
            query = query.having(score >= filters.min_score)
        with self.session() as s:
            rows = s.execute(query).all()
        return self.hits([r[0] for r in rows], [r[1] for r in rows])

    def top_label_counts(self, ids: Sequence[int]) -> dict[str, int]:
        """How many of ``ids`` have each label as their most likely one (taught ones too)."""
        counts: dict[str, int] = {}
        with self.session() as s:
            for chunk in chunks(list(ids), 500):
                query = (
                    select(LabelRow.label, func.count())
                    .where(top_label(), LabelRow.image_id.in_(chunk))
                    .group_by(LabelRow.label)
                )
                for label, count in s.execute(query):
                    counts[label] = counts.get(label, 0) + count
        return counts

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
            rows = s.execute(query.order_by(ClassifierRow.name))
            return [(cid, name, weights) for cid, name, weights in rows]

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
            for chunk in chunks(rows, 5000):
                s.execute(LabelRow.__table__.insert(), chunk)

    def _labels(self, s: Session, ids: list[int]) -> dict[int, tuple[Label, ...]]:
        """Each photo's labels: taught ones first (you chose them), then the model's top 5."""
        found: dict[int, list[Label]] = {i: [] for i in ids}
        custom_first = case((LabelRow.rank >= CUSTOM_RANK, 0), else_=1)
        for chunk in chunks(ids, 500):
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
                    cid = classifier_ids.get(lab.taught_by or "")
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


def top_label():
    """A photo's most likely model label, or a label a taught classifier gave it."""
    return (LabelRow.rank == 0) | (LabelRow.rank >= CUSTOM_RANK)
