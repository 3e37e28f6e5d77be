"""Clusters: the library grouped into look-alikes, without any labels."""

from __future__ import annotations

import streamlit as st

from vitsearch.records import Cluster, counted
from vitsearch.ui import context
from vitsearch.ui.widgets import PAGE_SIZE, page_of, photo_grid, thumbnail, too_few_photos

CARD_THUMBNAILS = 4
CARDS_PER_PAGE = 12
MAX_K = 5000
K_KEY = "clusters-k"


def render() -> None:
    st.header("Clusters")
    if too_few_photos(2):
        return
    found = clusters_with_controls()
    opened = st.session_state.get("open_cluster")
    chosen = next((c for c in found if c.id == opened), None)
    if chosen is not None:
        show_members(chosen)
    else:
        show_cards(found)


def clusters_with_controls() -> list[Cluster]:
    """The clusters, under a "Number of clusters" box that shows what automatic chose (so
    turning automatic off starts from it) or takes the user's number."""
    left, middle, right = st.columns([2, 2, 1], vertical_alignment="bottom")
    automatic = left.toggle("Choose k automatically", value=True, key="clusters-auto")
    recompute = right.button("Recompute")
    if automatic:
        found = _clustered("auto", recompute)
        st.session_state[K_KEY] = len(found)  # set before the box is drawn, so it shows
        middle.number_input("Number of clusters", 1, MAX_K, key=K_KEY, disabled=True)
        return found
    k = middle.number_input("Number of clusters", 1, MAX_K, key=K_KEY)
    return _clustered(int(k), recompute)


def _clustered(k: int | str, recompute: bool) -> list[Cluster]:
    with st.spinner("Clustering the library…"):
        return context.app().clusters(k, recompute)


def show_cards(found) -> None:
    st.caption(f"{len(found)} clusters, largest first")
    shown = page_of(found, "clusters", CARDS_PER_PAGE)
    ids = [hit.id for cluster in shown for hit in cluster.representatives[:CARD_THUMBNAILS]]
    details = context.app().details(ids)
    for cluster in shown:
        with st.container(border=True):
            title, button = st.columns([5, 1], vertical_alignment="center")
            title.markdown(
                f"**{cluster.name}** · {counted(cluster.size, 'photo')} · "
                f"cohesion {cluster.cohesion:.2f}"
            )
            button.button("Open", key=f"open-{cluster.id}", on_click=_open, args=(cluster.id,))
            cards = cluster.representatives[:CARD_THUMBNAILS]
            for column, hit in zip(st.columns(CARD_THUMBNAILS), cards, strict=False):
                with column:
                    thumbnail(details.get(hit.id))


def show_members(cluster) -> None:
    st.button("← All clusters", on_click=_open, args=(None,))
    st.subheader(f"{cluster.name} · {counted(cluster.size, 'photo')}")
    pages = max(1, -(-cluster.size // PAGE_SIZE))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"cluster-{cluster.id}-page")
    members = context.app().cluster_page(cluster.id, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    photo_grid(members, key=f"cluster-{cluster.id}")


def _open(cluster_id: int | None) -> None:
    st.session_state["open_cluster"] = cluster_id
