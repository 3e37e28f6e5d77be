"""Column types that differ by database: SQLite's stay exactly as they were; PostgreSQL gets
64-bit integers, byte-ordered paths and pgvector's ``vector`` for the embeddings.

The Python side never changes: an embedding is float32 bytes in both, so the noun modules
(``embeddings.py``, ``photos.py``) run unchanged on either.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import BigInteger, Integer, LargeBinary, String
from sqlalchemy.types import TypeDecorator, UserDefinedType

POSTGRESQL = "postgresql"


class PgVector(UserDefinedType):
    """pgvector's ``vector`` (any dimension: the library types it as ``vector(dim)`` once it
    learns its model's, see ``store/postgres.py``)."""

    cache_ok = True

    def get_col_spec(self, **_kw) -> str:
        return "vector"


class EmbeddingBytes(TypeDecorator):
    """float32 bytes in Python: a BLOB in SQLite, a ``vector`` in PostgreSQL (sent and read
    in pgvector's text form, which round-trips float32 exactly)."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == POSTGRESQL:
            return dialect.type_descriptor(PgVector())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value, dialect):
        if value is None or dialect.name != POSTGRESQL:
            return value
        return vector_text(np.frombuffer(value, dtype=np.float32))

    def process_result_value(self, value, dialect):
        if value is None or dialect.name != POSTGRESQL:
            return value
        return np.array(value[1:-1].split(","), dtype=np.float32).tobytes()


def vector_text(vector: np.ndarray) -> str:
    """pgvector's text form; Python's shortest repr of each float32 (as a double) reads back
    as the same float32."""
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def big_integer():
    """INTEGER in SQLite (already 64-bit), BIGINT in PostgreSQL (INTEGER is 32-bit there:
    nanosecond mtimes and signed 64-bit hashes need more)."""
    return Integer().with_variant(BigInteger(), POSTGRESQL)


def path_string():
    """A path compared byte by byte in both databases: ``photos.below`` turns a folder into
    a range of paths, which a locale collation (en_US: punctuation ignored) would break."""
    return String().with_variant(String(collation="C"), POSTGRESQL)
