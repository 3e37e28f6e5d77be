"""Other processes the app starts: a background `vitsearch index`, and the Streamlit server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from vitsearch.config import Settings, settings_env
from vitsearch.errors import LibraryLockedError, MissingFileError
from vitsearch.photos.files import scan
from vitsearch.store import writer_pid

UPLOAD_LIMIT_MB = 50


def start_indexing(settings: Settings, folder: Path) -> int:
    """Index ``folder`` in a background process; returns its pid. A folder without photos is
    refused before anything starts: `index` would keep it in the library as offline."""
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        raise MissingFileError(f"no such folder: {folder}")
    if next(scan(folder), None) is None:
        raise MissingFileError(
            f"no photos found in {folder}: nothing to index (nothing was added to the library)"
        )
    holder = writer_pid(settings.home, settings.store or None)
    if holder is not None:
        raise LibraryLockedError(
            f"another vitsearch process (pid {holder}) is writing to this library; "
            "it indexes its folders itself"
        )
    command = [sys.executable, "-m", "vitsearch", "index", str(folder), "--quiet"]
    env = {**os.environ, **settings_env(settings)}
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Waited for as soon as it ends, so it never lingers as a zombie until the server stops.
    threading.Thread(target=process.wait, daemon=True, name="index-reaper").start()
    return process.pid


def run_ui(settings: Settings, host: str, port: int) -> None:
    """Serve the Streamlit app over the library, in place of this process."""
    script = Path(__file__).parent / "ui" / "app.py"
    options = {
        "server.address": host,
        "server.port": port,
        "server.headless": "true",
        "server.maxUploadSize": UPLOAD_LIMIT_MB,
        "server.fileWatcherType": "none",
        "browser.gatherUsageStats": "false",
        "client.toolbarMode": "minimal",
    }
    command = [sys.executable, "-m", "streamlit", "run", str(script)]
    command += [part for name, value in options.items() for part in (f"--{name}", str(value))]
    # Become Streamlit (no child left behind): signals and Ctrl-C reach the server itself.
    os.execve(sys.executable, command, {**os.environ, **settings_env(settings)})
