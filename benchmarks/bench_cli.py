"""Cold start: one CLI query as a whole process, as a user's shell starts it.

Run: ``python benchmarks/bench_cli.py PATH [--model DIR] [--home DIR] [--photos N]
[--repeat R]``. PATH is a folder of photos (e.g. an ImageNet sample). Three libraries of the
first N photos are built (or reused from ``--home``): one with the backend ``auto`` picks on
this machine (what a user gets), one with ONNX Runtime int8 and one with torch. Then
``search PHOTO``, ``similar PHOTO``, ``status`` and ``classify`` of 5 photos are timed on each
as whole processes, the median of R, beside ``python -c pass`` and ``python -c "import
torch"`` timed in the same rounds (each round runs every command once, so a load that comes
and goes slows them alike). The target: a query on an existing library
answers in 3 s or less.

Without ``--model`` the checkpoint is a seeded random ViT-B/16 (``bench_index.save_vit_b16``):
the arithmetic and the file sizes of the real one, meaningless labels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _models import save_vit_b16
from _photos import link_photos, pick_photos

from vitsearch.machine.busy import OtherProcesses
from vitsearch.machine.hardware import cpu_name

DEFAULT_PHOTOS = 30
DEFAULT_REPEAT = 5
TARGET_SECONDS = 3.0
CLASSIFIED = 5
LIBRARIES = {
    "auto": ("--backend", "auto", "--precision", "auto"),
    "onnx-int8": ("--backend", "onnx", "--precision", "int8"),
    "torch": ("--backend", "torch"),
}
HEAVY = ("torch", "transformers", "plotly", "umap", "streamlit")
# what vitsearch says while it times backends on first use (to be over before the timing)
FIRST_USE = ("first run of", "timing again", "exporting")
# `vitsearch ARGS` in this process, then the heavy modules it imported, on stderr
CHILD = """
import atexit, json, runpy, sys
atexit.register(lambda: sys.stderr.write(
    "\\nIMPORTED " + json.dumps(sorted({heavy!r} & set(sys.modules)))))
sys.argv = ["vitsearch", *{args!r}]
runpy.run_module("vitsearch", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Command:
    name: str
    argv: tuple[str, ...]  # after the interpreter
    library: str | None = None  # the library home it runs on


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as temp:
        work = Path(args.home or temp)
        model = Path(args.model) if args.model else model_in(work)
        photos = linked(Path(args.path), args.photos, work / "photos")
        homes = {
            name: build(work / name, model, photos[0].parent, flags)
            for name, flags in LIBRARIES.items()
        }
        commands = [
            Command("python -c pass", ("-c", "pass")),
            Command('python -c "import torch"', ("-c", "import torch")),
            *(cmd for name in homes for cmd in queries(name, photos)),
        ]
        envs = {name: environment(home, model) for name, home in homes.items()}
        print(f"auto's library runs {runs_on(envs['auto'])}", flush=True)
        for command in commands:
            if command.library:
                settle(command, envs[command.library])
        imports = {c: heavy_imports(c, envs[c.library]) for c in commands if c.library}
        load_before = os.getloadavg()
        others = OtherProcesses()
        times = timed_rounds(commands, envs, args.repeat)
        busy = others.busy_cores()
        report(commands, times, imports, load_before, os.getloadavg(), busy, args.repeat)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a folder of photos")
    parser.add_argument("--model", help="a checkpoint directory (default: a random ViT-B/16)")
    parser.add_argument(
        "--home",
        help="keep the model and libraries here and reuse them (default: a temporary directory)",
    )
    parser.add_argument(
        "--photos", type=int, default=DEFAULT_PHOTOS, help=f"photos (default {DEFAULT_PHOTOS})"
    )
    parser.add_argument(
        "--repeat", type=int, default=DEFAULT_REPEAT, help=f"rounds (default {DEFAULT_REPEAT})"
    )
    return parser.parse_args(argv)


def model_in(work: Path) -> Path:
    directory = work / "vit-b16"
    if not (directory / "model.safetensors").is_file():
        print(f"saving a random ViT-B/16 to {directory}", flush=True)
        save_vit_b16(directory)
    return directory


def linked(source: Path, count: int, folder: Path) -> list[Path]:
    """The first ``count`` photos of ``source``, linked into ``folder`` (once)."""
    if not folder.is_dir():
        link_photos(pick_photos(source, count), folder)
    return sorted(folder.iterdir())


def build(home: Path, model: Path, photos: Path, flags: Sequence[str]) -> Path:
    """A library of the folder ``photos`` in ``home`` (indexed once: a kept home is reused)."""
    if not (home / "library.sqlite3").is_file():
        print(f"indexing {photos} into {home} ({' '.join(flags)})", flush=True)
        # the few photos stand for a library built by a large first job, which times the
        # backends (a small first job starts on torch at once)
        env = {**environment(home, model), "VITSEARCH_TIME_BACKENDS_FROM": "1"}
        vitsearch("index", str(photos), *flags, env=env)
    return home


def runs_on(env: dict) -> str:
    """The backend and precision a library records, as ``status --json`` shows them."""
    shown = json.loads(vitsearch("status", "--json", env=env).stdout)
    return f"{shown['backend']} {shown['precision']}"


def queries(library: str, photos: Sequence[Path]) -> list[Command]:
    photo = str(photos[0])
    run = ("-m", "vitsearch")
    return [
        Command(f"{library}: search PHOTO", (*run, "search", photo), library),
        Command(f"{library}: similar PHOTO", (*run, "similar", photo), library),
        Command(f"{library}: status", (*run, "status"), library),
        Command(
            f"{library}: classify {CLASSIFIED} photos",
            (*run, "classify", *map(str, photos[:CLASSIFIED])),
            library,
        ),
    ]


def environment(home: Path, model: Path) -> dict:
    return {
        **os.environ,
        "VITSEARCH_HOME": str(home),
        "VITSEARCH_MODEL": str(model),
        "HF_HUB_OFFLINE": "1",
    }


def vitsearch(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "vitsearch", *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"vitsearch {' '.join(args)} failed:\n{result.stderr}")
    return result


def settle(command: Command, env: dict, tries: int = 4) -> None:
    """Run ``command`` until vitsearch no longer times backends on first use (it times them
    again after a timing made beside a busy program, up to three times)."""
    for _ in range(tries):
        result = run(command, env)
        if not any(phrase in result.stderr for phrase in FIRST_USE):
            return
        print(f"warm-up of {command.name}: {result.stderr.strip().splitlines()[-1]}", flush=True)


def run(command: Command, env: dict | None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *command.argv], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{command.name} failed:\n{result.stderr}")
    return result


def heavy_imports(command: Command, env: dict) -> list[str]:
    """The heavy modules ``command`` imports (one extra run, untimed)."""
    code = CHILD.format(heavy=set(HEAVY), args=list(command.argv[2:]))
    result = run(Command(command.name, ("-c", code)), env)
    return json.loads(result.stderr.rpartition("IMPORTED ")[2])


def timed_rounds(commands: Sequence[Command], envs: dict, repeat: int) -> dict[Command, list]:
    """Each command's wall seconds over ``repeat`` rounds; each round runs every command."""
    times: dict[Command, list[float]] = {command: [] for command in commands}
    for _ in range(repeat):
        for command in commands:
            env = envs[command.library] if command.library else None
            started = time.perf_counter()
            run(command, env)
            times[command].append(time.perf_counter() - started)
    return times


def report(commands, times, imports, load_before, load_after, busy, repeat) -> None:
    medians = {command: statistics.median(seconds) for command, seconds in times.items()}
    bare, torch_import = (medians[command] for command in commands[:2])
    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} cores); median of {repeat} runs each")
    print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other "
        f"processes kept {'?' if busy is None else f'{busy:.2f}'} cores busy meanwhile"
    )
    print(f"{'command':34} {'median s':>9} {'min s':>7} {'x pass':>7} {'x torch':>8}  imports")
    for command in commands:
        median = medians[command]
        heavy = ", ".join(imports.get(command, [])) or ("-" if command.library else "")
        target = "" if not command.library else (" ok" if median <= TARGET_SECONDS else " SLOW")
        print(
            f"{command.name:34} {median:9.2f} {min(times[command]):7.2f} "
            f"{median / bare:7.1f} {median / torch_import:8.2f}  {heavy}{target}"
        )
    print(f"(target: {TARGET_SECONDS:g} s; 'x torch' is the command over `import torch` alone)")


if __name__ == "__main__":
    main()
