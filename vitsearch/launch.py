"""Other processes the app starts: a background `vitsearch index`, and the Streamlit server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vitsearch.config import Settings, settings_env
from vitsearch.errors import LibraryLockedError, MissingFileError
from vitsearch.store import writer_pid

UPLOAD_LIMIT_MB = 50


def start_indexing(settings: Settings, folder: Path) -> int:
    """Index ``folder`` in a background process; returns its pid."""
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        raise MissingFileError(f"no such folder: {folder}")
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
