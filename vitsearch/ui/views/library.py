"""Library: what is indexed, by which model, the watcher, failed files, and indexing a folder."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vitsearch.errors import VitsearchError
from vitsearch.records import LibraryStatus
from vitsearch.ui import context


def render() -> None:
    st.header("Library")
    status = context.app().status()
    counts = st.columns(4)
    counts[0].metric("Photos", status.images)
    counts[1].metric("Failed", status.failed)
    counts[2].metric("Offline", status.offline)
    counts[3].metric("Vectors", status.vectors)
    st.markdown(
        f"**Model:** `{status.model or '-'}` · dim {status.dim or '-'} · "
        f"device {status.device or '-'} · precision {status.precision or '-'}  \n"
        f"**Home:** `{status.home}`"
    )
    watcher_line(status)
    index_form()  # above the tables, which can be long: its answer stays in view
    folders(status)
    failures()


def watcher_line(status: LibraryStatus) -> None:
    if status.writer_pid:
        st.success(
            f"A writer (pid {status.writer_pid}) is keeping the library in step; "
            f"last commit {status.last_commit_at or '-'}."
        )
    else:
        st.info(
            f"No watcher is running; last commit {status.last_commit_at or '-'}. "
            "Start one with `vitsearch watch FOLDER`."
        )


def folders(status: LibraryStatus) -> None:
    if status.folders:
        st.subheader("Folders")
        st.dataframe(
            [{"folder": f.path, "online": f.online} for f in status.folders], hide_index=True
        )


def failures() -> None:
    failed = context.app().failures(limit=500)
    if failed:
        st.subheader(f"Files that could not be read ({len(failed)})")
        st.dataframe([{"file": path, "error": error} for path, error in failed], hide_index=True)


def index_form() -> None:
    st.subheader("Index a folder")
    with st.form("index-folder"):
        folder = st.text_input("Folder", placeholder=str(Path.home() / "Pictures"))
        if st.form_submit_button("Index now"):
            start_indexing(folder.strip())  # its answer goes right under the button


def start_indexing(folder: str) -> None:
    """Start indexing ``folder``, saying how it went under the button and in a toast (which
    shows wherever the page is scrolled)."""
    if not folder:
        st.warning("Type the folder to index first, e.g. " + str(Path.home() / "Pictures"))
        return
    try:
        pid = context.app().start_indexing(Path(folder))
    except VitsearchError as exc:
        st.error(str(exc))
        st.toast(str(exc), icon=":material/error:")
        return
    st.success(
        f"Indexing {folder} in the background (pid {pid}); new photos appear in "
        "searches as batches are committed."
    )
    st.toast(f"Indexing {folder} started", icon=":material/check_circle:")
