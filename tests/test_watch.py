"""`vitsearch watch` as people run it: a real subprocess following a real folder."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import draw_album, draw_photo, vitsearch
from vitsearch.store import open_library

pytestmark = pytest.mark.slow
DEADLINE = 60.0


@pytest.fixture
def env(cli_env: dict) -> dict:
    return {**cli_env, "VITSEARCH_WATCH_QUIET_SECONDS": "1.0"}


class WatchProcess:
    def __init__(self, folder: Path, env: dict, log: Path, batch_size: int = 8) -> None:
        self.log = log
        command = ["watch", str(folder), "--batch-size", str(batch_size)]
        with open(log, "w") as stderr:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vitsearch", *command],
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def wait_ready(self) -> None:
        eventually(lambda: "watching" in self.log.read_text(), "the watcher never started")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signum)
        out, _ = self.process.communicate(timeout=60)
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_watch(env: dict, tmp_path: Path):
    started: list[WatchProcess] = []

    def start(folder: Path, batch_size: int = 8) -> WatchProcess:
        log = tmp_path / f"watch-{len(started)}.log"
        watcher = WatchProcess(folder, env, log, batch_size)
        started.append(watcher)
        watcher.wait_ready()
        return watcher

    yield start
    for watcher in started:
        watcher.kill()


def eventually(
    check: Callable[[], bool], message: str, deadline: float = DEADLINE, poll: float = 0.2
) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(poll)
    raise AssertionError(message)


def library_rows(home: Path) -> dict[str, tuple[int, bool]]:
    """path -> (id, indexed ok) as a reader sees it."""
    with open_library(home) as library:
        return {path: (row.id, row.ok) for path, row in library.files_under("/").items()}


def photos_on_disk(folder: Path) -> set[str]:
    names = (".jpg", ".png")
    return {str(p) for p in folder.rglob("*") if p.suffix in names and not p.name.startswith(".")}


def committed_images(home: Path) -> int:
    """Photos a reader sees, without opening the FAISS cache."""
    with open_library(home) as library:
        return library.counts().images


def converged(home: Path, folder: Path, broken: set[str] = frozenset()) -> bool:
    rows = library_rows(home)
    ok = {path for path, (_id, good) in rows.items() if good}
    return ok == photos_on_disk(folder) - broken and set(rows) - ok == broken


def test_watch_follows_every_kind_of_change(
    start_watch, env: dict, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "library"
    originals = draw_album(folder / "album", 6)
    watcher = start_watch(folder)
    eventually(lambda: converged(home, folder), "initial reconcile did not index the folder")
    ids_before = {path: row[0] for path, row in library_rows(home).items()}

    # a burst of 50, while a reader searches
    burst = draw_album(tmp_path / "staging", 50, start_seed=100)
    (folder / "burst").mkdir()
    for photo in burst:
        shutil.copy(photo, folder / "burst" / photo.name)
    during = vitsearch("search", str(originals[0]), "--json", env=env, check=False)
    assert during.returncode == 0 and json.loads(during.stdout)[0]["path"] == str(originals[0])

    # one photo written slowly, in chunks, slower than nothing but faster than the quiet time
    data = draw_photo(tmp_path / "slow-source.jpg", seed=500, size=(400, 300)).read_bytes()
    with open(folder / "slow.jpg", "wb") as slow:
        for start in range(0, len(data), len(data) // 4 + 1):
            slow.write(data[start : start + len(data) // 4 + 1])
            slow.flush()
            time.sleep(0.4)

    # a rename, a folder move, a deletion, a corrupt file and a partial download
    renamed = folder / "album" / "renamed.jpg"
    originals[1].rename(renamed)
    (folder / "album").rename(folder / "moved-album")
    (folder / "moved-album" / originals[2].name).unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "incoming.jpg.part").write_bytes(data[:100])

    broken = {str(folder / "broken.jpg")}
    eventually(lambda: converged(home, folder, broken), "the library did not converge")
    rows = library_rows(home)
    assert rows[str(folder / "moved-album" / "renamed.jpg")][0] == ids_before[str(originals[1])]
    assert rows[str(folder / "moved-album" / originals[0].name)][0] == ids_before[str(originals[0])]
    assert (
        f"skipping {folder / 'slow.jpg'}" not in watcher.log.read_text()
    )  # never read half-written
    hits = json.loads(
        vitsearch(
            "search", str(tmp_path / "slow-source.jpg"), "--json", "-k", "1", env=env, check=False
        ).stdout
    )
    assert hits[0]["path"] == str(folder / "slow.jpg") and hits[0]["score"] == pytest.approx(
        1.0, abs=1e-3
    )

    second = vitsearch("index", str(folder), env=env, check=False)
    assert second.returncode != 0 and "is writing to this library" in second.stderr
    assert (
        json.loads(vitsearch("status", "--json", env=env, check=False).stdout)["writer_pid"]
        == watcher.process.pid
    )

    code, out = watcher.stop(signal.SIGTERM)
    assert code == 0 and out.startswith("stopped:")
    info = json.loads(vitsearch("status", "--json", env=env, check=False).stdout)
    assert (
        info["writer_pid"] is None
        and info["images"] == info["vectors"] == len(photos_on_disk(folder)) - 1
    )
    assert_faiss_file_matches(home)


def test_sigkill_mid_burst_then_restart_converges(
    start_watch, env: dict, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "library"
    folder.mkdir()
    # one photo per commit and a quick, cheap poll, so the kill lands mid-burst however
    # fast the writes are
    watcher = start_watch(folder, batch_size=1)
    for photo in draw_album(tmp_path / "staging", 120):
        shutil.copy(photo, folder / photo.name)
    eventually(lambda: committed_images(home) > 0, "nothing was committed", poll=0.01)
    watcher.kill()
    committed = committed_images(home)
    start_watch(folder)
    eventually(lambda: converged(home, folder), "restart did not converge")
    assert committed < 120, "the burst finished before the kill; the test proved nothing"
    assert len(library_rows(home)) == 120


def test_sigint_exits_zero(start_watch, tmp_path: Path) -> None:
    folder = tmp_path / "library"
    draw_album(folder, 2)
    watcher = start_watch(folder)
    code, out = watcher.stop(signal.SIGINT)
    assert code == 0 and "stopped:" in out


def assert_faiss_file_matches(home: Path) -> None:
    import faiss

    index = faiss.read_index(str(home / "vectors.faiss"))
    with open_library(home) as library:
        assert set(faiss.vector_to_array(index.id_map).tolist()) == set(
            library.embedding_ids().tolist()
        )


def library_file_bytes(home: Path) -> dict[str, str]:
    """sha256 of the library's files as written (the database and its write-ahead log)."""
    import hashlib

    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.glob("library.sqlite3*"))
        if not path.name.endswith("-shm")  # shared memory: readers map it, it is not data
    }


def test_read_commands_leave_the_library_untouched_while_a_watcher_holds_it(
    start_watch, env: dict, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "library"
    photos = draw_album(folder / "album", 8)
    start_watch(folder)
    eventually(lambda: converged(home, folder), "the watcher did not index the folder")
    time.sleep(1.5)  # past its quiet time: nothing left for it to commit
    before = library_file_bytes(home)
    reads = [
        ("status", "--json"),
        ("search", str(photos[0]), "--json"),
        ("similar", str(photos[1]), "--json"),
        ("labels", "--json"),
        ("clusters", "--json"),  # computes and stores clusters: in the derived cache
        ("map", "--method", "pca", "--json"),  # a projection and its points: the same
        ("duplicates", "--json"),
        ("teach", "--list"),
    ]
    for command in reads:
        vitsearch(*command, env=env)
    assert library_file_bytes(home) == before
    assert (home / "derived.sqlite3").is_file()
    again = json.loads(vitsearch("clusters", "--json", env=env).stdout)
    assert sum(cluster["size"] for cluster in again) == len(photos)  # from the derived cache
