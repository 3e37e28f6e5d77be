"""The library's storage: the only package that speaks SQL or touches FAISS files."""

from vitsearch.store.database import Database
from vitsearch.store.library import Library, open_library, writer_pid
from vitsearch.store.lock import WriterLock, holder_pid
from vitsearch.store.vectors import VectorIndex, open_vector_index

__all__ = [
    "Database",
    "Library",
    "VectorIndex",
    "WriterLock",
    "holder_pid",
    "open_library",
    "open_vector_index",
    "writer_pid",
]
