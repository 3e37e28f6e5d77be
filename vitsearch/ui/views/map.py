"""Map: the library in 2-D, coloured by cluster; lasso or box to list photos."""

from __future__ import annotations

import html

import streamlit as st

from vitsearch.errors import ConfigError
from vitsearch.records import Hit
from vitsearch.ui import context
from vitsearch.ui.widgets import page_of, photo_grid, too_few_photos

MAP_HEIGHT = 640  # px: most of a laptop screen below the header, the list just under it

WARMING_UP = (
    "UMAP is warming up: it compiles its code once per server, 10 s to 2 minutes. Showing a "
    "PCA map until it is ready; the page switches to UMAP by itself."
)

# The clusters under the map, in as many columns as fit: every one shown, none scrolled away
# (Plotly's own legend scrolls past the fifteenth or so at this height).
CLUSTER_LIST = """
<div class="map-clusters" style="column-width: 15rem; column-gap: 1.5rem;
  font-size: 0.85rem; line-height: 1.5;">{entries}</div>
"""
CLUSTER_ENTRY = """<div class="map-cluster" style="break-inside: avoid;">
  <span style="display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 50%;
  background: {colour}; margin-right: 0.4rem;"></span>{name}</div>"""


def render() -> None:
    st.header("Map")
    shared = context.app()
    if too_few_photos(2):
        return
    warming = context.umap_warming()
    refit = st.button("Fit the map again", disabled=warming)
    try:
        if warming and shared.map_needs_umap():
            st.info(WARMING_UP)
            figure = shared.map_figure(shared.map_preview())
            switch_when_warm()
        else:
            with st.spinner("Placing photos on the map…"):
                figure = shared.map_figure(shared.map_points(refit=refit))
    except ConfigError as exc:
        st.error(str(exc))
        return
    st.caption(
        "Hover a point for its path, label and cluster; draw a lasso or a box to list photos."
    )
    figure.update_layout(height=MAP_HEIGHT, showlegend=False)  # the clusters are listed below
    event = st.plotly_chart(
        figure,
        key="map",
        width="stretch",
        height=MAP_HEIGHT,
        on_select="rerun",
        selection_mode=("lasso", "box", "points"),
    )
    cluster_list(figure)
    selected = [
        int(p["customdata"])
        for p in event.selection.get("points", [])
        if p.get("customdata") is not None
    ]
    if selected:
        show_selection(selected)


@st.fragment(run_every=2)
def switch_when_warm() -> None:
    """Rerun the page (now with UMAP) once the warm-up is over."""
    if not context.umap_warming():
        st.rerun()


def cluster_list(figure) -> None:
    """Every cluster on the map, largest first, with its colour and size."""
    entries = "".join(
        CLUSTER_ENTRY.format(colour=trace.marker.color, name=html.escape(trace.name))
        for trace in figure.data
    )
    st.html(CLUSTER_LIST.format(entries=entries))


def show_selection(ids: list[int]) -> None:
    st.subheader(f"{len(ids)} selected photos")
    hits: list[Hit] = context.app().photos(ids)
    photo_grid(page_of(hits, "map"), key="map-selection")
