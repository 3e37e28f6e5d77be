"""A newcomer's first ``vitsearch index`` of a few photos, as a whole process in a new home.

Run: ``python benchmarks/bench_first_run.py PATH [--model DIR] [--photos N] [--repeat R]``.
PATH is a folder of photos (e.g. the ImageNet sample); the first N are linked into a folder
of their own. Each round indexes them into two fresh homes with backend ``auto``:

- **default**: what a user gets, a job below ``VITSEARCH_TIME_BACKENDS_FROM`` starts at once;
- **baseline**: ``VITSEARCH_TIME_BACKENDS_FROM=1``, every job times the backends and makes
  their exports first, as every first run did before.

It prints the median wall time of each (R rounds, taking turns, so a passing load slows both),
their ratio, the summary line of the last round and the cores other processes kept busy.
Without ``--model`` the checkpoint is a seeded random ViT-B/16: the real arithmetic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _models import save_vit_b16
from _photos import pick_photos

from vitsearch.machine.busy import OtherProcesses
from vitsearch.machine.hardware import cpu_name

VARIANTS = {"default": {}, "baseline (always time)": {"VITSEARCH_TIME_BACKENDS_FROM": "1"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos_dir", type=Path)
    parser.add_argument("--model", type=Path, help="checkpoint (default: random ViT-B/16)")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-first-run-") as temp:
        temp = Path(temp)
        model = args.model or save_vit_b16(temp / "vit-b16")
        folder = temp / "photos"
        folder.mkdir()
        for photo in pick_photos(args.photos_dir, args.photos):
            (folder / photo.name).symlink_to(photo.resolve())
        others = OtherProcesses()
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        lines: dict[str, str] = {}
        for round_ in range(args.repeat):
            for name, extra in VARIANTS.items():
                home = temp / f"home-{round_}-{len(seconds[name])}-{name.split()[0]}"
                took, lines[name] = first_index(folder, home, model, extra)
                seconds[name].append(took)
        busy = others.busy_cores()
    report(args, model, seconds, lines, busy)


def first_index(folder: Path, home: Path, model: Path, extra: dict) -> tuple[float, str]:
    env = {
        **os.environ,
        "VITSEARCH_HOME": str(home),
        "VITSEARCH_MODEL": str(model),
        "VITSEARCH_BACKEND": "auto",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vitsearch", "index", str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"index failed:\n{result.stderr}")
    return took, result.stdout.strip().splitlines()[-1]


def report(args, model: Path, seconds: dict, lines: dict, busy: float) -> None:
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; other processes kept {busy:.2f} cores busy")
    print(f"model: {model}; {args.photos} photos; median of {args.repeat} whole processes")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        rounds = " ".join(f"{v:.1f}" for v in seconds[name])
        print(f"  {name:<24} {median:6.1f} s  (rounds {rounds})")
        print(f"  {'':<24} {lines[name]}")
    default, baseline = medians["default"], medians["baseline (always time)"]
    print(f"first run: {baseline / default:.1f}x sooner than timing the backends first")


if __name__ == "__main__":
    main()
