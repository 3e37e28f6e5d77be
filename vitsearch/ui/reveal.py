"""Showing a library photo in the system's file manager (the app only runs on your machine)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

# Long enough for a launcher that fails (no handler for folders) to say so, short enough not
# to hold up the page; a launcher still running after it is taken as having opened one.
LAUNCH_SECONDS = 1.5


@dataclass(frozen=True)
class Revealed:
    """What happened, in words for the user; ``ok`` False when nothing was opened."""

    ok: bool
    message: str


def file_manager_command(path: str, system: str | None = None) -> list[str]:
    """The command that shows ``path`` in this system's file manager."""
    system = system or platform.system()
    if system == "Darwin":
        return ["open", "-R", path]
    if system == "Windows":
        return ["explorer", f"/select,{path}"]
    return ["xdg-open", str(Path(path).parent)]


def reveal(path: str) -> Revealed:
    """Open the file manager at ``path``; the launcher is always waited for (no zombie)."""
    command = file_manager_command(path)
    where = command[-1] if command[0] == "xdg-open" else path
    if shutil.which(command[0]) is None:
        return Revealed(False, f"no file manager here (no `{command[0]}`); the file is `{path}`")
    try:
        launcher = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the server leaves the file manager open
        )
    except OSError as exc:
        return Revealed(False, f"could not run `{command[0]}` ({exc.strerror}); file `{path}`")
    try:
        code = launcher.wait(LAUNCH_SECONDS)
    except subprocess.TimeoutExpired:
        threading.Thread(target=launcher.wait, daemon=True, name="reveal-reaper").start()
        code = 0
    if code != 0:
        return Revealed(False, f"`{command[0]}` could not open `{where}` (exit {code})")
    return Revealed(True, f"Opened `{where}` in the file manager")
