"""A query on a library that runs an export (ONNX Runtime) imports neither torch nor
transformers: the whole command in a fresh process, as a user's shell starts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import draw_album, draw_photo, vitsearch

pytestmark = pytest.mark.slow

for extra in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(
        extra, reason="needs onnxruntime, onnx and onnxscript (vitsearch dependencies)"
    )

# what a query never needs: the model's training stack, and the map's and the UI's libraries
HEAVY = ("torch", "transformers", "plotly", "umap", "streamlit")

# `vitsearch ARGS` in this process, then the heavy modules it imported, as JSON on stderr
CHILD = """
import atexit, json, runpy, sys
heavy = {heavy!r}
atexit.register(lambda: sys.stderr.write("\\nIMPORTED " + json.dumps(sorted(heavy & set(sys.modules)))))
sys.argv = ["vitsearch", *{args!r}]
runpy.run_module("vitsearch", run_name="__main__", alter_sys=True)
"""


def imported(args: list[str], env: dict) -> tuple[list[str], str]:
    """The heavy modules ``vitsearch ARGS`` imported, and its stdout."""
    code = CHILD.format(heavy=set(HEAVY), args=args)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stderr.rpartition("IMPORTED ")[2]), result.stdout


@pytest.fixture(scope="module")
def onnx_library(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """A library built with ONNX Runtime int8 (exported into its home on the first index), and
    the environment of a shell that names only the model and the home."""
    import os

    root = tmp_path_factory.mktemp("onnx-library")
    draw_album(root / "album", 6)
    env = {
        **os.environ,
        "VITSEARCH_HOME": str(root / "home"),
        "VITSEARCH_MODEL": str(tiny_model),
        "VITSEARCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    vitsearch("index", str(root / "album"), "--backend", "onnx", "--precision", "int8", env=env)
    return env


def test_a_query_on_an_onnx_library_imports_neither_torch_nor_transformers(
    onnx_library: dict, tmp_path: Path
) -> None:
    env = onnx_library
    album = sorted((Path(env["VITSEARCH_HOME"]).parent / "album").iterdir())
    query = draw_photo(tmp_path / "query.jpg", seed=2)
    heavy, out = imported(["search", str(query), "--json"], env)
    assert heavy == [] and json.loads(out)[0]["path"] == str(album[2])
    heavy, out = imported(["similar", str(album[1]), "--json"], env)
    assert heavy == [] and json.loads(out)
    heavy, out = imported(["status", "--json"], env)
    assert heavy == [] and json.loads(out)["model_fingerprint"].endswith("+onnx-int8")
    # classify runs the library's backend too (no timing of the others on first use)
    heavy, out = imported(["classify", *map(str, album[:3]), "--json"], env)
    assert heavy == [] and len(json.loads(out)) == 3


def test_a_query_with_an_export_directory_imports_neither(cli_env: dict, tmp_path: Path) -> None:
    photos = draw_album(tmp_path / "album", 4)
    out = tmp_path / "exported"
    env = {**cli_env, "VITSEARCH_BACKEND": "auto", "VITSEARCH_PRECISION": "auto"}
    vitsearch("export", "--out", str(out), env=env)
    env = {**env, "VITSEARCH_MODEL": str(out)}
    vitsearch("index", str(tmp_path / "album"), env=env)
    heavy, found = imported(["search", str(photos[3]), "--json"], env)
    assert heavy == [] and json.loads(found)[0]["path"] == str(photos[3])
