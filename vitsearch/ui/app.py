"""The Streamlit app: ``vitsearch ui`` runs this script."""

from __future__ import annotations

import streamlit as st

from vitsearch.ui import context
from vitsearch.ui.views import clusters, duplicates, library, map, search

PAGES = {
    "Search": search.render,
    "Clusters": clusters.render,
    "Duplicates": duplicates.render,
    "Map": map.render,
    "Library": library.render,
}


def main() -> None:
    st.set_page_config(page_title="vitsearch", page_icon=":material/image_search:", layout="wide")
    st.sidebar.title("vitsearch")
    context.map_warmup()  # started by the first page anyone opens, whichever it is
    if st.session_state.get("page") not in PAGES:
        wanted = st.query_params.get("page", "Search")
        st.session_state["page"] = wanted if wanted in PAGES else "Search"
    page = st.sidebar.radio("Page", list(PAGES), key="page")
    assert page is not None  # None only for a radio without options
    st.query_params["page"] = page
    PAGES[page]()


main()
