"""The Streamlit app through streamlit.testing (AppTest), on a library indexed with the tiny ViT."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import PINNED_BACKEND, draw_album, once, plant, save_tiny_vit, sphere_groups
from vitsearch.cli import main as cli
from vitsearch.config import load_settings
from vitsearch.records import ModelInfo
from vitsearch.store import open_library

NEEDS_UI = 'the app needs the ui extra: pip install -e ".[ui]"'
st = pytest.importorskip("streamlit", reason=NEEDS_UI)
AppTest = pytest.importorskip("streamlit.testing.v1", reason=NEEDS_UI).AppTest
from vitsearch.ui.views import map as map_page  # noqa: E402  (needs streamlit)

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
    monkeypatch.setenv("VITSEARCH_BACKEND", PINNED_BACKEND["backend"])
    monkeypatch.setenv("VITSEARCH_PRECISION", PINNED_BACKEND["precision"])
    once(load_settings(), write=True).index([tmp_path / "album"])
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
    word = once(load_settings()).labels()[0].label.split(",")[0].split()[-1]
    at = open_app()
    at.text_input(key="label").set_value(word.upper()).run()
    assert not at.exception and not at.error
    assert any(s.value.endswith("results") for s in at.subheader)
    at.text_input(key="label").set_value("qwertz").run()
    assert "no label 'qwertz'" in at.error[0].value
    at.text_input(key="label").set_value(word).run()
    similar = [b for b in at.button if b.label == "Similar"]  # fits half a card
    assert similar
    first = Path(captions(at).split("`")[1])  # the first result's path
    similar[0].click().run()
    assert at.text_input(key="label").value == ""
    header = [m.value for m in at.markdown if "More like" in m.value]
    assert header == [f"**More like {first.name}**"]  # its name, not "More like photo 7"
    assert f"`{first.parent}`" in captions(at)
    shown = [b for b in at.button if b.label == "Similar"]
    assert len(at.get("image")) == len(shown) + 1  # its thumbnail above the results' own


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
    monkeypatch.setenv("VITSEARCH_BACKEND", PINNED_BACKEND["backend"])
    for page in ("Search", "Clusters", "Duplicates", "Map"):
        at = open_app(page)
        assert not at.exception
        assert "vitsearch index" in at.info[0].value


def test_clusters_page_cards_and_members(indexed: list[Path]) -> None:
    at = open_app("Clusters")
    assert not at.exception
    opens = [b for b in at.button if b.label == "Open"]
    assert len(opens) >= 2
    chosen = len(once(load_settings()).clusters())
    assert at.number_input[0].value == chosen  # what automatic chose, not a fixed 20
    assert at.number_input[0].disabled
    assert f"{chosen} clusters" in captions(at)
    at.toggle[0].set_value(False).run()
    assert at.number_input[0].value == chosen and not at.number_input[0].disabled
    at.number_input[0].set_value(3).run()
    assert len([b for b in at.button if b.label == "Open"]) == 3
    next(b for b in at.button if b.label == "Open").click().run()
    assert any("photos" in s.value for s in at.subheader)
    assert [b for b in at.button if b.label == "Similar"]


def test_duplicates_page_trash_updates_library(indexed: list[Path], tmp_path: Path) -> None:
    at = open_app("Duplicates")
    assert not at.exception
    at.slider[0].set_value(0.9).run()
    assert any(b.label == "Export the list (CSV)" for b in at.get("download_button"))
    boxes = [c for c in at.checkbox if c.label == "trash"]
    assert boxes
    boxes[0].check().run()
    assert any(w.value == "1 photo is ticked to go to the system trash." for w in at.warning)
    move = [b for b in at.button if b.label == "Move 1 photo to the trash"]
    assert move
    before = once(load_settings()).status().as_dict()["images"]
    move[0].click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Moved 1 photo to the trash and updated the library."]
    assert once(load_settings()).status().as_dict()["images"] == before - 1
    assert list((tmp_path / "xdg" / "Trash" / "files").iterdir())


def test_map_and_library_pages(indexed: list[Path]) -> None:
    at = open_app("Map")
    assert not at.exception and at.get("plotly_chart")
    at = open_app("Library")
    assert not at.exception
    assert any("device cpu" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos"] == "13" and metrics["Vectors"] == "13"


def test_upload_with_another_model_is_refused_as_the_cli_does(
    indexed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = save_tiny_vit(tmp_path / "other-vit", seed=1)  # same shape, other weights
    monkeypatch.setenv("VITSEARCH_MODEL", str(other))
    at = open_app()
    at.file_uploader[0].set_value(("query.jpg", indexed[2].read_bytes(), "image/jpeg")).run()
    assert not at.exception
    assert len(at.error) == 1  # and no results from foreign vectors:
    assert not any(s.value.endswith("results") for s in at.subheader)
    refused = at.error[0].value
    assert "this library was built with model" in refused and "\n" not in refused
    result = CliRunner().invoke(cli, ["search", str(indexed[2])], env=dict(os.environ))
    assert result.exit_code == 1
    assert refused in result.output


def chart_title(at: AppTest) -> str:
    return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]


def umap_compiled_here() -> bool:
    """Whether an earlier test in this process already paid for UMAP's numba compilation."""
    layouts = sys.modules.get("umap.layouts")  # its layout step compiles at the first fit
    return layouts is not None and bool(
        layouts._nb_optimize_layout_euclidean_single_epoch.signatures
    )


def test_map_shows_pca_while_umap_warms_up_then_switches(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("umap", reason='UMAP needs the map extra: pip install -e ".[map]"')
    if umap_compiled_here():
        pytest.skip("UMAP is compiled in this process already: there is nothing to warm up")
    vectors, _groups = sphere_groups([20, 20, 20], dim=24, seed=3)  # 60 photos: auto is UMAP
    plant(home, vectors, model=ModelInfo("m", "sha256:warm", 24))
    monkeypatch.setenv("VITSEARCH_HOME", str(home))
    at = open_app("Map")  # the UI's first page: the warm-up starts now, for 10 s or more
    assert not at.exception
    assert [info.value for info in at.info] == [map_page.WARMING_UP]
    assert chart_title(at).endswith("(pca)")
    with open_library(home) as library:
        assert library.map_state() is None  # the PCA shown meanwhile is stored nowhere
    warmup = next(t for t in threading.enumerate() if t.name == "vitsearch-umap-warmup")
    warmup.join(timeout=240)
    at.run()  # what the page's poll does once the warm-up is over
    assert not at.exception and not at.info
    assert chart_title(at).endswith("(umap)")


def fake_launcher(folder: Path, body: str) -> Path:
    """A stand-in for the desktop's ``xdg-open`` (the boundary): logs its pid and arguments."""
    folder.mkdir()
    script = folder / "xdg-open"
    script.write_text(f'#!/bin/sh\necho "$$ $@" >> {folder / "calls"}\n{body}\n')
    script.chmod(0o755)
    return folder


def reveal_first(at: AppTest) -> AppTest:
    at.file_uploader[0].set_value(("query.jpg", jpeg_bytes(3), "image/jpeg")).run()
    return next(b for b in at.button if b.label == "Reveal").click().run()


def toasts(at: AppTest) -> list[str]:
    return [toast.value for toast in at.toast]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc to find zombies")
def test_reveal_says_what_happened_and_leaves_no_zombie(
    indexed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher still running at the toast is reaped when it exits (not when the server
    stops): its /proc entry goes, rather than staying a zombie."""
    bin_dir = fake_launcher(tmp_path / "bin", "sleep 2")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    at = reveal_first(open_app())
    assert not at.exception
    pid, folder = (bin_dir / "calls").read_text().split()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the launcher was left a zombie"
    assert toasts(at) == [f"Opened `{folder}` in the file manager"]
    assert Path(folder).parent == indexed[0].parents[1]  # an album folder


def test_reveal_explains_a_failing_or_missing_file_manager(
    indexed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_launcher(tmp_path / "bin", "exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    at = reveal_first(open_app())
    assert re.fullmatch(r"`xdg-open` could not open `.+` \(exit 3\)", toasts(at)[0])
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    at = reveal_first(open_app())
    assert toasts(at)[0].startswith("no file manager here (no `xdg-open`); the file is `/")


def test_index_now_answers_under_the_button(indexed: list[Path], tmp_path: Path) -> None:
    at = open_app("Library")
    at.text_input[0].set_value(str(tmp_path / "no-such-folder"))
    at.button[0].click().run()  # the form's "Index now"
    assert not at.exception
    expected = f"no such folder: {tmp_path / 'no-such-folder'}"
    assert [e.value for e in at.error] == [expected]
    assert toasts(at) == [expected]  # seen wherever the page is scrolled
    at.text_input[0].set_value("   ")
    at.button[0].click().run()
    assert at.warning and "Type the folder to index first" in at.warning[0].value


def index_now(folder: Path) -> AppTest:
    at = open_app("Library")
    at.text_input[0].set_value(str(folder))
    return at.button[0].click().run()  # the form's "Index now"


def test_index_now_on_a_folder_without_photos_starts_nothing(
    indexed: list[Path], tmp_path: Path
) -> None:
    empty = tmp_path / "no-photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    at = index_now(empty)
    assert not at.exception and not at.success
    expected = f"no photos found in {empty}: nothing to index (nothing was added to the library)"
    assert [e.value for e in at.error] == [expected]
    assert toasts(at) == [expected]
    assert str(empty) not in [f.path for f in once(load_settings()).status().folders]


def process_state(pid: str) -> str | None:
    """The kernel's state letter for ``pid`` (``Z`` for a zombie), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc to find zombies")
def test_index_now_indexes_and_leaves_no_zombie(indexed: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "new-photos"
    draw_album(folder, 1, 90)
    at = index_now(folder)
    assert not at.exception and not at.error
    pid = re.search(r"\(pid (\d+)\)", at.success[0].value).group(1)
    deadline = time.monotonic() + 120
    while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.2)
    grace = time.monotonic() + 3  # the reaper's moment between the exit and the wait
    while process_state(pid) is not None and time.monotonic() < grace:
        time.sleep(0.1)
    assert process_state(pid) is None, "the indexing process was left a zombie"
    assert str(folder) in [f.path for f in once(load_settings()).status().folders]


EMOJI = re.compile("[\u2300-\u2bff\U0001f000-\U0001faff]")


def test_no_text_needs_an_emoji_font(indexed: list[Path]) -> None:
    """Debian without fonts-noto-color-emoji draws emoji as empty boxes."""
    shown = []
    for page in ("Search", "Clusters", "Duplicates", "Library"):
        at = open_app(page)
        if page == "Search":
            at.file_uploader[0].set_value(("q.jpg", indexed[0].read_bytes(), "image/jpeg")).run()
        if page == "Duplicates":
            at.slider[0].set_value(0.9).run()
            assert any(":green-badge[keep]" in c.value for c in at.caption)
        kinds = ("caption", "markdown", "info", "success", "warning")
        shown += [element.value for kind in kinds for element in at.get(kind)]
    assert shown
    assert [text for text in shown if EMOJI.search(text)] == []
