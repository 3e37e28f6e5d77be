"""The one app every page and session shares, created once per server process."""

from __future__ import annotations

import streamlit as st

from vitsearch.app import App, open_app
from vitsearch.config import load_settings


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
