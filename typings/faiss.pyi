# faiss-cpu ships a py.typed stub generated from SWIG that lacks what its Python wrappers add
# (SearchParametersIVF(sel=, nprobe=), IDSelectorBitmap(mask), Index.id_map, rand_perm, ...)
# and marks pointers Optional that are never null. mypy reads this stub first (mypy_path), so
# faiss is untyped here, like the other libraries without types.
from typing import Any

def __getattr__(name: str) -> Any: ...
