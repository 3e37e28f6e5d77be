"""Clusters: the library grouped into look-alikes, without any labels."""

from __future__ import annotations

import streamlit as st

from vitsearch.search.clusters import clusters
from vitsearch.ui import context
from vitsearch.ui.widgets import PAGE_SIZE, page_of, photo_grid, thumbnail, too_few_photos

CARD_THUMBNAILS = 4
CARDS_PER_PAGE = 12


def render() -> None:
    st.header("Clusters")
    shared = context.library()
    if too_few_photos(2):
        return
    k, recompute = cluster_controls()
    with st.spinner("Clustering the library…"):
        found = shared.run(lambda library: clusters(library, k, recompute))
    opened = st.session_state.get("open_cluster")
    chosen = next((c for c in found if c.id == opened), None)
    if chosen is not None:
        show_members(chosen)
    else:
        show_cards(found)


def cluster_controls() -> tuple[int | str, bool]:
    left, middle, right = st.columns([2, 2, 1], vertical_alignment="bottom")
    automatic = left.toggle("Choose k automatically", value=True)
    k = middle.number_input("Number of clusters", 2, 5000, 20, disabled=automatic)
    recompute = right.button("Recompute")
    return ("auto" if automatic else int(k)), recompute


def show_cards(found) -> None:
    st.caption(f"{len(found)} clusters, largest first")
    shown = page_of(found, "clusters", CARDS_PER_PAGE)
    ids = [hit.id for cluster in shown for hit in cluster.representatives[:CARD_THUMBNAILS]]
    details = context.library().run(lambda library: library.db.details(ids))
    for cluster in shown:
        with st.container(border=True):
            title, button = st.columns([5, 1], vertical_alignment="center")
            title.markdown(
                f"**{cluster.name}** · {cluster.size} photos · cohesion {cluster.cohesion:.2f}"
            )
            button.button("Open", key=f"open-{cluster.id}", on_click=_open, args=(cluster.id,))
            cards = cluster.representatives[:CARD_THUMBNAILS]
            for column, hit in zip(st.columns(CARD_THUMBNAILS), cards, strict=False):
                with column:
                    thumbnail(details.get(hit.id))


def show_members(cluster) -> None:
    st.button("← All clusters", on_click=_open, args=(None,))
    st.subheader(f"{cluster.name} · {cluster.size} photos")
    pages = max(1, -(-cluster.size // PAGE_SIZE))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"cluster-{cluster.id}-page")
    members = context.library().run(
        lambda library: library.db.cluster_members(cluster.id, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    )
    photo_grid(members, key=f"cluster-{cluster.id}")


def _open(cluster_id: int | None) -> None:
    st.session_state["open_cluster"] = cluster_id
