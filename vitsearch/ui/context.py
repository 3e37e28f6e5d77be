"""What every page shares, created once per server process (``st.cache_resource``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import streamlit as st

from vitsearch import app
from vitsearch.config import Settings, load_settings
from vitsearch.store import Library, open_library
from vitsearch.ui.thumbnails import Thumbnails

T = TypeVar("T")
REFRESH_SECONDS = 1.0


class SharedLibrary:
    """One reader for all sessions; a lock because FAISS catch-up mutates the index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._library = open_library(settings.home)
        self._lock = threading.Lock()
        self._refreshed = 0.0

    @contextmanager
    def fresh(self) -> Iterator[Library]:
        """The library, caught up with whatever a writer (the watcher) committed meanwhile.

        Checked at most once per ``REFRESH_SECONDS``: a page render makes many calls.
        """
        with self._lock:
            if time.monotonic() - self._refreshed > REFRESH_SECONDS:
                self._library.refresh()
                self._refreshed = time.monotonic()
            yield self._library

    def run(self, work: Callable[[Library], T]) -> T:
        with self.fresh() as library:
            return work(library)


@st.cache_resource
def settings() -> Settings:
    return load_settings()


@st.cache_resource
def library() -> SharedLibrary:
    return SharedLibrary(settings())


@st.cache_resource
def thumbnails() -> Thumbnails:
    return Thumbnails(settings().home)


@st.cache_resource(show_spinner="Loading the model (first query only)…")
def embedder():
    return app.load_model(settings(), library().run(lambda shared: shared.model))
