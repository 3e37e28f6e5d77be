"""A batch written into a PostgreSQL library with COPY: the rows stream to the server in one
round trip per table instead of one statement per row (psycopg 3's ``cursor.copy``), on the
connection of the session's transaction, so the batch still commits or fails as a whole.

- images: COPY into a temporary staging table, then one set-based upsert by path that keeps
  an existing photo's id (``INSERT .. SELECT .. ON CONFLICT (path) DO UPDATE``);
- embeddings: COPY in binary, the vectors in pgvector's own binary form built by numpy for
  the whole batch. Text needs each float formatted in Python and parsed by the server: 944
  rows/s (768-d, ``vector_text``) or 1,254 (numpy's ``%.9g``) against 9,756 in binary, COPY
  into a table without the HNSW index, 2 shared cores;
- labels: COPY, after the photos' old ones were deleted.

``copy_rows`` is the same path for whole tables (``vitsearch migrate`` into PostgreSQL).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

STAGED_IMAGES = "staged_images"
# The binary COPY frame: signature, flags, header extension length; the trailer ends it.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
BINARY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def upsert_images(s: Session, rows: list[dict]) -> dict[str, int]:
    """Insert or update images by path (rows as ``photos._image_values`` makes them, one
    statement for photos and failures alike): path -> id."""
    if not rows:
        return {}
    columns = list(rows[0])
    names = ", ".join(columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "path")
    with _cursor(s) as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE {STAGED_IMAGES} AS SELECT {names} FROM images WITH NO DATA"
        )
        _copy_dicts(cursor, STAGED_IMAGES, rows)
        cursor.execute(
            f"INSERT INTO images ({names}) SELECT {names} FROM {STAGED_IMAGES} "
            f"ON CONFLICT (path) DO UPDATE SET {updates} RETURNING id, path"
        )
        found = {path: image_id for image_id, path in cursor.fetchall()}
        cursor.execute(f"DROP TABLE {STAGED_IMAGES}")  # (a failed batch's goes with its rollback)
    return found


def copy_vectors(s: Session, ids: list[int], vectors: np.ndarray, first_seq: int) -> None:
    """New embeddings rows (none of ``ids`` may have one): write numbers from ``first_seq``."""
    seqs = np.arange(first_seq, first_seq + len(ids))
    with _cursor(s) as cursor:
        statement = "COPY embeddings (image_id, vector, seq) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(statement) as copy:
            copy.write(binary_embeddings(np.asarray(ids), vectors, seqs))


def copy_labels(s: Session, rows: list[dict]) -> None:
    """New labels rows (as ``labels._label_rows`` makes them)."""
    if not rows:
        return
    with _cursor(s) as cursor:
        _copy_dicts(cursor, "labels", rows)


def copy_rows(conn: Connection, table: str, rows: list[dict]) -> None:
    """Rows of one table as the database gave them (an embedding's vector as float32 bytes),
    ids included, by COPY on ``conn``'s transaction: the embeddings in binary."""
    if not rows:
        return
    with _cursor(conn) as cursor:
        if table != "embeddings":
            _copy_dicts(cursor, table, rows)
            return
        ids, seqs = (np.array([row[c] for row in rows]) for c in ("image_id", "seq"))
        vectors = np.stack([np.frombuffer(row["vector"], dtype=np.float32) for row in rows])
        statement = "COPY embeddings (image_id, vector, seq) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(statement) as copy:
            copy.write(binary_embeddings(ids, vectors, seqs))


def binary_embeddings(ids: np.ndarray, vectors: np.ndarray, seqs: np.ndarray) -> bytes:
    """(image_id, vector, seq) rows in COPY's binary format, all at once: per row the field
    count, then each field's length and big-endian value. A pgvector ``vector`` is int16
    dim, int16 0, then dim float32; both integers are ``integer`` columns (schema.py)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("id_size", ">i4"),
            ("id", ">i4"),
            ("vector_size", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vector", ">f4", (dim,)),
            ("seq_size", ">i4"),
            ("seq", ">i4"),
        ]
    )
    rows = np.zeros(count, row)
    rows["fields"] = 3
    rows["id_size"] = rows["seq_size"] = 4
    rows["id"], rows["seq"] = ids, seqs
    rows["vector_size"] = 4 + 4 * dim
    rows["dim"] = dim
    rows["vector"] = vectors
    return BINARY_HEADER + rows.tobytes() + BINARY_TRAILER


def _copy_dicts(cursor, table: str, rows: list[dict]) -> None:
    """COPY rows of one shape (text format: psycopg writes each value as its literal)."""
    columns = list(rows[0])
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def _cursor(s: Session | Connection):
    """A psycopg cursor on the connection of the session's (or connection's) transaction."""
    conn = s.connection() if isinstance(s, Session) else s
    driver = conn.connection.driver_connection
    assert driver is not None  # None only for a connection invalidated, not one in use
    return driver.cursor()
