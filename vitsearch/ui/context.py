"""The one app every page and session shares, created once per server process."""

from __future__ import annotations

import logging
import threading

import streamlit as st

from vitsearch.app import App, open_app
from vitsearch.config import load_settings

log = logging.getLogger(__name__)


@st.cache_resource
def app() -> App:
    """A live reader: it serialises the sessions' calls and sees the watcher's commits."""
    return open_app(load_settings(), live=True)


def embedder_loaded() -> None:
    """Load the model once, with a spinner, before the first query that needs it."""
    shared = app()
    if shared._embedder is None:
        with st.spinner("Loading the model (first query only)…"):
            _ = shared.embedder


@st.cache_resource
def map_warmup() -> threading.Thread:
    """UMAP's code compiling in the background from the server's start (once per server), so
    the first map does not wait for it; the Map page shows PCA until it is done."""
    shared = app()  # made here, by the page's own thread, not by the warm-up's
    thread = threading.Thread(
        target=_warm_map, args=(shared,), daemon=True, name="vitsearch-umap-warmup"
    )
    thread.start()
    return thread


def umap_warming() -> bool:
    return map_warmup().is_alive()


def _warm_map(shared: App) -> None:
    try:
        shared.warm_map()
    except Exception as error:  # the map itself will say what is wrong, when it is asked for
        log.warning("could not warm UMAP up: %s", error)
