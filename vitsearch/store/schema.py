"""SQLAlchemy tables. SQLite is the source of truth, embeddings included."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vitsearch.store.columns import EmbeddingBytes, big_integer, path_string

# 2: clusters, map; 3: cluster page index; 4: taught classifiers; 5: phash;
# 6: clusters and map moved to the derived cache (store/derived.py)
SCHEMA_VERSION = 6
CUSTOM_RANK = 1000  # labels.rank of a taught classifier's label: CUSTOM_RANK + classifier id

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every class here maps a Table (SQLAlchemy says FromClause)


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Root(Base):
    """A folder given to ``index``; offline while missing (an unplugged drive), never purged."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(path_string(), unique=True)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seen_at: Mapped[float | None] = mapped_column(Float)


class ImageRow(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: an id is never reused, so a stale FAISS vector can't pass for a new photo.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"), index=True)
    path: Mapped[str] = mapped_column(path_string(), unique=True)
    size: Mapped[int] = mapped_column(big_integer())
    mtime_ns: Mapped[int] = mapped_column(big_integer())
    fingerprint: Mapped[str | None] = mapped_column(String, index=True)
    content_hash: Mapped[str | None] = mapped_column(String, index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[float | None] = mapped_column(Float)
    # perceptual hash for duplicates, as a signed 64-bit integer; NULL: indexed before schema 5
    phash: Mapped[int | None] = mapped_column(big_integer())
    status: Mapped[str] = mapped_column(String, default=STATUS_OK)
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[float] = mapped_column(Float)


class EmbeddingRow(Base):
    """One float32 vector per image; ``seq`` grows with every write so FAISS can catch up."""

    __tablename__ = "embeddings"
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(EmbeddingBytes())  # pgvector's vector in PostgreSQL
    seq: Mapped[int] = mapped_column(Integer, index=True)


class LabelRow(Base):
    __tablename__ = "labels"
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String)
    score: Mapped[float] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String)  # "custom:NAME" for taught labels
    __table_args__ = (Index("ix_labels_label", "label"),)


class ClassifierRow(Base):
    """A classifier taught with ``vitsearch teach`` (weights as an .npz blob)."""

    __tablename__ = "classifiers"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    classes: Mapped[str] = mapped_column(Text)  # JSON list
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    accuracy: Mapped[float | None] = mapped_column(Float)
    model_fingerprint: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Float)
