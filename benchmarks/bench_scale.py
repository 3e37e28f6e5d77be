"""Indexing at scale, (b): the same photos through the plain single-process pipeline and
through Ray Data (``index --ray``) on a two-node Ray cluster on loopback.

Run: ``python benchmarks/bench_scale.py [--photos 2000] [--batch-size B]``. The photos are
drawn (seeded, 640x480 JPEG) in a temporary folder; the model is the seeded random ViT-B/16
of the other benchmarks, pinned to torch fp32 so both runs use the same backend. Both "nodes"
share this machine's cores, so the cluster cannot be faster: the ratio is Ray's overhead
(worker and actor start-up, moving decoded photos through the object store), not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from _common import add_model_options, index_folders, save_vit_b16, timed
from PIL import Image, ImageDraw

from vitsearch.config import available_cores, load_settings
from vitsearch.model.hardware import cpu_name


def draw_photos(folder: Path, count: int) -> None:
    for i in range(count):
        rng = random.Random(i)
        image = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(640), rng.randrange(480)
            box = (x, y, x + rng.randrange(20, 300), y + rng.randrange(20, 200))
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"p{i:05d}.jpg", quality=90)


def index_once(settings, folder: Path) -> tuple[float, int, str]:
    summary, seconds = timed(lambda: index_folders(settings, [folder]))
    return seconds, summary.embedded, summary.line()


def start_cluster(tmp: Path, cpus: int):
    """Two Ray nodes on 127.0.0.1 with their own temporary folder (set before Ray loads)."""
    (tmp / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "object_store_memory": 500 << 20}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    add_model_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        draw_photos(folder, args.photos)
        model = save_vit_b16(tmp / "vit-b16")
        base = load_settings(
            environ={},
            model=str(model),
            backend="torch",
            precision="fp32",
            batch_size=args.batch_size,
            threads=args.threads,
        )
        print(f"{cpu_name()}, {available_cores()} cores; {args.photos} photos 640x480")
        plain = index_once(base.replace(home=tmp / "plain"), folder)
        print(f"single process: {plain[0]:.1f}s, {plain[1] / plain[0]:.2f} img/s  ({plain[2]})")
        cores = available_cores()
        cluster = start_cluster(tmp, cores)  # each node claims every core: they share them
        try:
            ray_settings = base.replace(home=tmp / "ray-home", ray=cluster.address, threads=1)
            ray = index_once(ray_settings, folder)
        finally:
            import ray as ray_module

            ray_module.shutdown()
            cluster.shutdown()
        print(f"Ray Data, 2 nodes: {ray[0]:.1f}s, {ray[1] / ray[0]:.2f} img/s  ({ray[2]})")
        print(f"cluster / single process: {plain[0] / ray[0]:.2f}x")


if __name__ == "__main__":
    main()
