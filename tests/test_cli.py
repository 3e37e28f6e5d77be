"""The command line, run as users run it: real subprocesses, the tiny ViT, real files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import draw_album, draw_photo, save_tiny_vit, vitsearch
from vitsearch.store import open_library

pytestmark = pytest.mark.slow


@pytest.fixture
def env(cli_env: dict) -> dict:
    return cli_env


@pytest.fixture
def album(tmp_path: Path) -> list[Path]:
    photos = draw_album(tmp_path / "album", 8)
    draw_photo(tmp_path / "album" / "modes" / "rgba.png", seed=20, mode="RGBA", fmt="PNG")
    draw_photo(tmp_path / "album" / "modes" / "gray.png", seed=21, mode="L", fmt="PNG")
    (tmp_path / "album" / "modes" / "empty.jpg").write_bytes(b"")
    return photos


def status(env: dict) -> dict:
    return json.loads(vitsearch("status", "--json", env=env).stdout)


def test_index_search_similar_classify_status(env: dict, album: list[Path], tmp_path: Path) -> None:
    first = vitsearch("index", str(tmp_path / "album"), "--batch-size", "3", env=env)
    assert "10 new, 0 updated, 0 moved, 0 removed, 1 failed" in first.stdout
    assert "skipping" in first.stderr and "empty.jpg: empty file" in first.stderr

    hits = json.loads(vitsearch("search", str(album[2]), "-k", "3", "--json", env=env).stdout)
    assert hits[0]["path"] == str(album[2]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert set(hits[0]) == {"id", "path", "score", "labels"}
    assert len(hits) == 3 and [h["score"] for h in hits] == sorted(
        (h["score"] for h in hits), reverse=True
    )
    assert set(hits[0]["labels"][0]) == {"label", "score"}

    similar = json.loads(vitsearch("similar", str(album[2]), "-k", "4", "--json", env=env).stdout)
    assert len(similar) == 4 and str(album[2]) not in [h["path"] for h in similar]

    classified = json.loads(
        vitsearch("classify", str(album[0]), str(album[1]), "--json", env=env).stdout
    )
    assert [c["path"] for c in classified] == [str(album[0]), str(album[1])]
    assert all(len(c["labels"]) == 5 for c in classified)

    info = status(env)
    assert (info["images"], info["failed"], info["vectors"], info["dim"]) == (10, 1, 10, 32)
    assert info["model"] == env["VITSEARCH_MODEL"] and info["home"] == env["VITSEARCH_HOME"]
    assert info["precision"] in ("fp32", "bf16") and info["device"] == "cpu"

    again = vitsearch("index", str(tmp_path / "album"), env=env)
    assert again.stdout.startswith("nothing changed: 11 photos up to date, no model work")


def test_faiss_file_deleted_or_corrupt_is_rebuilt(
    env: dict, album: list[Path], tmp_path: Path, home: Path
) -> None:
    vitsearch("index", str(tmp_path / "album"), env=env)
    (home / "vectors.faiss").unlink()
    hits = json.loads(vitsearch("search", str(album[0]), "--json", env=env).stdout)
    assert hits[0]["path"] == str(album[0])
    assert "10 vectors" in vitsearch("rebuild-index", env=env).stdout
    assert (home / "vectors.faiss").stat().st_size > 0
    (home / "vectors.faiss").write_bytes(b"corrupt" * 10)
    assert status(env)["vectors"] == 10
    draw_photo(tmp_path / "album" / "late.jpg", seed=40)
    vitsearch("index", str(tmp_path / "album"), env=env)
    assert (home / "vectors.faiss").stat().st_size > 70
    assert status(env)["vectors"] == 11


def test_other_model_refused_with_one_line(env: dict, album: list[Path], tmp_path: Path) -> None:
    vitsearch("index", str(tmp_path / "album"), env=env)
    other = save_tiny_vit(tmp_path / "other-model", seed=3)
    result = vitsearch(
        "index", str(tmp_path / "album"), "--model", str(other), env=env, check=False
    )
    assert result.returncode != 0
    assert "built with model" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "/no/such/folder"], "no such folder"),
        (["search", "/no/such/image.jpg"], "no such image file"),
        (["similar", "/no/such/image.jpg"], "there is no library at"),
        (["duplicates"], "there is no library at"),
        (["map", "--out", "/no/such/dir/map.html"], "no such folder: /no/such/dir (for --out"),
        (["index", ".", "--batch-size", "0"], "batch-size must be at least 1"),
        (["index", ".", "--model", "/no/such/model"], "no model checkpoint directory"),
        (["classify", "x.jpg", "--model", "google/vit-base-patch16-224"], "not cached"),
    ],
)
def test_errors_are_one_line(env: dict, args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "vitsearch", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(env: dict) -> None:
    result = vitsearch("search", "/no/such/image.jpg", "--debug", env=env, check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_killed_run_resumes_and_indexes_each_photo_once(
    env: dict, tmp_path: Path, home: Path
) -> None:
    photos = draw_album(tmp_path / "big", 400)
    process = start_slow_index(tmp_path / "big", env, subprocess.DEVNULL)
    committed = _wait_for_rows(home / "library.sqlite3", at_least=20, process=process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 20 <= committed < 400, "the run finished before it could be killed; use more photos"

    vitsearch("index", str(tmp_path / "big"), env=env)
    with sqlite3.connect(home / "library.sqlite3") as db:
        paths = [row[0] for row in db.execute("SELECT path FROM images")]
        embeddings = db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert sorted(paths) == sorted(map(str, photos)) and embeddings == 400
    info = status(env)
    assert info["images"] == info["vectors"] == 400
    assert faiss_file_ids(home) == sqlite_ids(home)


def start_slow_index(folder: Path, env: dict, output) -> subprocess.Popen:
    """`vitsearch index` committing in small batches, slow enough to be interrupted."""
    command = [
        sys.executable,
        "-m",
        "vitsearch",
        "index",
        str(folder),
        "--batch-size",
        "2",
        "--decode-workers",
        "1",
    ]
    return subprocess.Popen(command, env=env, stdout=output, stderr=output, text=True)


def faiss_file_ids(home: Path) -> set[int]:
    """The ids in the FAISS file as written on disk (not caught up by a reader)."""
    import faiss

    index = faiss.read_index(str(home / "vectors.faiss"))
    return set(faiss.vector_to_array(index.id_map).tolist())


def sqlite_ids(home: Path) -> set[int]:
    with sqlite3.connect(home / "library.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT image_id FROM embeddings")}


def _wait_for_rows(database: Path, at_least: int, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if database.exists():
            try:
                with sqlite3.connect(database, timeout=1) as db:
                    count = db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= at_least:
                return count
        time.sleep(0.05)
    raise AssertionError("the indexer never committed enough rows to be killed mid-run")


def test_ctrl_c_stops_cleanly_with_a_summary(env: dict, tmp_path: Path, home: Path) -> None:
    draw_album(tmp_path / "big", 300)
    process = start_slow_index(tmp_path / "big", env, subprocess.PIPE)
    _wait_for_rows(home / "library.sqlite3", at_least=10, process=process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted, run again to finish" in out and "Traceback" not in err
    info = status(env)
    assert 10 <= info["images"] < 300 and info["vectors"] == info["images"]
    assert faiss_file_ids(home) == sqlite_ids(home)
    with sqlite3.connect(home / "library.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM embeddings").fetchone()[0] == info["images"]


def test_explore_commands_on_the_tiny_model(env: dict, album: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    original = album[3]
    with Image.open(original) as image:
        image.resize((image.width // 2, image.height // 2)).save(
            tmp_path / "album" / "copy-small.jpg", quality=60
        )
    vitsearch("index", str(tmp_path / "album"), env=env)

    groups = json.loads(vitsearch("duplicates", "--kind", "near", "--json", env=env).stdout)
    together = [g for g in groups if str(original) in {m["path"] for m in g["members"]}]
    assert len(together) == 1
    assert str(tmp_path / "album" / "copy-small.jpg") in {m["path"] for m in together[0]["members"]}
    assert together[0]["keep"] != next(
        m["id"] for m in together[0]["members"] if m["path"].endswith("copy-small.jpg")
    )

    labels = json.loads(vitsearch("labels", "--json", env=env).stdout)
    top_label = labels[0]["label"]
    word = top_label.split(",")[0].split()[-1].upper()
    hits = json.loads(vitsearch("search", "--label", word, "--json", env=env).stdout)
    assert hits and all(any(word.lower() in lab["label"] for lab in h["labels"]) for h in hits)
    missing = vitsearch("search", "--label", "zzzz", env=env, check=False)
    assert missing.returncode != 0 and "no label 'zzzz'" in missing.stderr

    found = json.loads(vitsearch("clusters", "--k", "2", "--json", env=env).stdout)
    assert len(found) == 2 and sum(c["size"] for c in found) == 11
    under = json.loads(
        vitsearch(
            "search",
            str(original),
            "--under",
            str(tmp_path / "album" / "modes"),
            "-k",
            "5",
            "--json",
            env=env,
        ).stdout
    )
    assert [h["path"] for h in under] and all("/modes/" in h["path"] for h in under)

    missing = tmp_path / "no-such-dir" / "map.html"
    refused = vitsearch("map", "--out", str(missing), env=env, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: no such folder: {missing.parent} (for --out {missing}); create it first "
        "(run with --debug for a traceback)"
    ]
    assert not missing.parent.exists()
    with open_library(Path(env["VITSEARCH_HOME"])) as library:
        assert library.map_state() is None  # refused before any map work
    vitsearch("map", "--method", "pca", "--out", str(tmp_path / "map.html"), env=env)
    assert (tmp_path / "map.html").stat().st_size > 100_000  # plotly.js inside: works offline
