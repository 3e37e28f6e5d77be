"""Map: the library in 2-D, coloured by cluster; lasso or box to list photos."""

from __future__ import annotations

import streamlit as st

from vitsearch.errors import ConfigError
from vitsearch.records import Hit
from vitsearch.ui import context
from vitsearch.ui.widgets import page_of, photo_grid, too_few_photos


def render() -> None:
    st.header("Map")
    shared = context.app()
    if too_few_photos(2):
        return
    refit = st.button("Fit the map again")
    try:
        with st.spinner("Placing photos on the map…"):
            figure = shared.map_figure(shared.map_points(refit=refit))
    except ConfigError as exc:
        st.error(str(exc))
        return
    st.caption("Hover a point for its path and label; draw a lasso or a box to list photos.")
    event = st.plotly_chart(
        figure, key="map", on_select="rerun", selection_mode=("lasso", "box", "points")
    )
    selected = [
        int(p["customdata"])
        for p in event.selection.get("points", [])
        if p.get("customdata") is not None
    ]
    if selected:
        show_selection(selected)


def show_selection(ids: list[int]) -> None:
    st.subheader(f"{len(ids)} selected photos")
    hits: list[Hit] = context.app().photos(ids)
    photo_grid(page_of(hits, "map"), key="map-selection")
