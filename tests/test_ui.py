"""The Streamlit app through streamlit.testing (AppTest), on a library indexed with the tiny ViT."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.helpers import draw_album
from vitsearch import app
from vitsearch.config import load_settings

pytestmark = pytest.mark.slow
APP = str(Path(__file__).resolve().parents[1] / "vitsearch" / "ui" / "app.py")


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Each test gets its own library: the app caches resources per process."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # send2trash's trash can
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()


@pytest.fixture
def indexed(home: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    photos = draw_album(tmp_path / "album" / "trips", 6) + draw_album(
        tmp_path / "album" / "home", 6, 50
    )
    copy = tmp_path / "album" / "home" / "copy.png"
    from PIL import Image

    with Image.open(photos[0]) as image:
        image.resize((image.width // 2, image.height // 2)).save(copy)
    monkeypatch.setenv("VITSEARCH_HOME", str(home))
    monkeypatch.setenv("VITSEARCH_MODEL", str(tiny_model))
    monkeypatch.setenv("VITSEARCH_THREADS", "1")
    app.index_folders(load_settings(), [tmp_path / "album"])
    return photos


def open_app(page: str = "Search") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = page
    return at.run()


def jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (90, 60), (seed * 40 % 256, 80, 120)).save(buffer, format="JPEG")
    return buffer.getvalue()


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_upload_shows_labels_and_neighbours(indexed: list[Path]) -> None:
    at = open_app()
    assert not at.exception
    at.file_uploader[0].set_value(("query.jpg", indexed[2].read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert any("The model sees" in m.value for m in at.markdown)
    assert any(s.value.endswith("results") for s in at.subheader)
    assert str(indexed[2]) in captions(at)
    assert "**1.000**" in captions(at)  # the photo itself comes first, score ~1


def test_filters_restrict_results(indexed: list[Path], tmp_path: Path) -> None:
    at = open_app()
    at.sidebar.text_input[0].set_value(str(tmp_path / "album" / "home")).run()
    at.file_uploader[0].set_value(("query.jpg", indexed[0].read_bytes(), "image/jpeg")).run()
    shown = [line for line in captions(at).splitlines() if line.startswith("`/")]
    assert shown and all("/album/home/" in line for line in shown)
    assert str(indexed[0]) not in captions(at)  # it lives in /trips


def test_label_search_and_more_like_this(indexed: list[Path]) -> None:
    word = app.list_labels(load_settings())[0].label.split(",")[0].split()[-1]
    at = open_app()
    at.text_input(key="label").set_value(word.upper()).run()
    assert not at.exception and not at.error
    assert any(s.value.endswith("results") for s in at.subheader)
    at.text_input(key="label").set_value("qwertz").run()
    assert "no label 'qwertz'" in at.error[0].value
    at.text_input(key="label").set_value(word).run()
    more = [b for b in at.button if b.label == "More like this"]
    assert more
    more[0].click().run()
    assert any("More like photo" in m.value for m in at.markdown)
    assert at.text_input(key="label").value == ""


def test_bad_upload_is_explained(indexed: list[Path]) -> None:
    at = open_app()
    at.file_uploader[0].set_value(("evil.jpg", b"not an image at all", "image/jpeg")).run()
    assert not at.exception
    assert at.error and "not an image" in at.error[0].value
    truncated = indexed[1].read_bytes()[:200]
    at.file_uploader[0].set_value(("cut.jpg", truncated, "image/jpeg")).run()
    assert not at.exception and at.error


def test_empty_library_says_how_to_index(home: Path, tiny_model: Path, monkeypatch) -> None:
    monkeypatch.setenv("VITSEARCH_HOME", str(home))
    monkeypatch.setenv("VITSEARCH_MODEL", str(tiny_model))
    for page in ("Search", "Clusters", "Duplicates", "Map"):
        at = open_app(page)
        assert not at.exception
        assert "vitsearch index" in at.info[0].value


def test_clusters_page_cards_and_members(indexed: list[Path]) -> None:
    at = open_app("Clusters")
    assert not at.exception
    opens = [b for b in at.button if b.label == "Open"]
    assert len(opens) >= 2
    at.toggle[0].set_value(False).run()
    at.number_input[0].set_value(3).run()
    assert len([b for b in at.button if b.label == "Open"]) == 3
    next(b for b in at.button if b.label == "Open").click().run()
    assert any("photos" in s.value for s in at.subheader)
    assert [b for b in at.button if b.label == "More like this"]


def test_duplicates_page_trash_updates_library(indexed: list[Path], tmp_path: Path) -> None:
    at = open_app("Duplicates")
    assert not at.exception
    at.slider[0].set_value(0.9).run()
    assert any(b.label == "Export the list (CSV)" for b in at.get("download_button"))
    boxes = [c for c in at.checkbox if c.label == "trash"]
    assert boxes
    boxes[0].check().run()
    move = [b for b in at.button if b.label.startswith("Move 1 photos")]
    assert move
    before = app.library_status(load_settings())["images"]
    move[0].click().run()
    assert not at.exception and at.success
    assert app.library_status(load_settings())["images"] == before - 1
    assert list((tmp_path / "xdg" / "Trash" / "files").iterdir())


def test_map_and_library_pages(indexed: list[Path]) -> None:
    at = open_app("Map")
    assert not at.exception and at.get("plotly_chart")
    at = open_app("Library")
    assert not at.exception
    assert any("device cpu" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos"] == "13" and metrics["Vectors"] == "13"
