"""The library's storage: the only package that speaks SQL or touches FAISS files.

:class:`Library` is its one public type: open it with :func:`open_library`.
"""

from vitsearch.store.library import Library, open_library, writer_pid
from vitsearch.store.transfer import copy_library

__all__ = ["Library", "copy_library", "open_library", "writer_pid"]
