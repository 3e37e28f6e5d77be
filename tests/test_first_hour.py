"""A new user's first hour: cheap checks before any model work, messages that say what is
there, and no files left in a home that never got a photo.

"No model load" is proved without timing: the model named has a valid config beside weights
that are not weights, so any load would fail; a command that succeeds (or fails with the
expected cheap message) never read them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers import FakeEmbedder, draw_photo, once, plant
from vitsearch import app
from vitsearch.cli import main
from vitsearch.config import DEFAULT_MODEL, load_settings
from vitsearch.errors import (
    ConfigError,
    EmptyLibraryError,
    MissingFileError,
    ModelMismatchError,
    ModelNotAvailableError,
    NoMatchError,
    NotIndexedError,
)
from vitsearch.indexer import Indexer, Summary
from vitsearch.model.checkpoint import check_checkpoint
from vitsearch.model.choice.runtime import checkpoint_source
from vitsearch.records import Filters, ModelInfo, counted
from vitsearch.store import open_library, writer_pid
from vitsearch.store.lock import WriterLock
from vitsearch.tools.export import export_model

DIM = 8
# what loading the garbage weights says (safetensors' own error, or the loader's)
WEIGHTS_FAILED = r"(?i)header|safetensors|cannot load checkpoint"


def broken_weights_checkpoint(directory: Path) -> Path:
    """A checkpoint whose config is valid and whose weights file is garbage."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "vit", "architectures": ["ViTForImageClassification"]}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "preprocessor_config.json").write_text(
        '{"image_processor_type": "ViTImageProcessor"}'
    )
    (directory / "model.safetensors").write_bytes(b"these are not weights")
    return directory


@pytest.fixture
def unloadable(tmp_path: Path) -> Path:
    return broken_weights_checkpoint(tmp_path / "unloadable-model")


@pytest.fixture
def cheap(home: Path, unloadable: Path):
    """Settings whose model passes the cheap check but cannot load."""
    return load_settings(
        environ={}, home=home, model=str(unloadable), backend="torch", precision="fp32"
    )


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def run(*args: str, home: Path) -> object:
    return CliRunner().invoke(main, [*args, "--home", str(home)], catch_exceptions=False)


# -- A. cheap checks first, the model last ---------------------------------------------------


def test_index_of_an_empty_folder_on_a_new_home_loads_no_model(
    cheap, home: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    summary = once(cheap, write=True).index([tmp_path / "empty"])
    assert (summary.new, summary.embedded, summary.unchanged) == (0, 0, 0)
    assert not home.exists()  # nothing to store: no library made


def test_watch_starts_without_loading_the_model(cheap, home: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    state = once(cheap, write=True).watch([tmp_path / "empty"], on_start=lambda w: w.stop())
    assert state.totals.new == 0


@pytest.mark.slow
def test_the_model_loads_when_there_is_a_photo(cheap, tmp_path: Path) -> None:
    draw_photo(tmp_path / "one" / "a.jpg", seed=1)
    with pytest.raises(Exception, match=WEIGHTS_FAILED):
        once(cheap, write=True).index([tmp_path / "one"])


def test_another_checkpoint_is_refused_before_it_loads(cheap, home: Path, tmp_path: Path) -> None:
    """The library's model is another checkpoint: refused from the files, so the unloadable
    weights are never tried (loading them fails with another error)."""
    plant(home, unit_vectors(3), model=ModelInfo("/models/the-librarys-own", "other:1", DIM))
    image = draw_photo(tmp_path / "query.jpg", seed=3)
    draw_photo(tmp_path / "album" / "new.jpg", seed=4)
    refused = "built with model /models/the-librarys-own .*use --model /models/the-librarys-own"
    with pytest.raises(ModelMismatchError, match=refused):
        once(cheap).search_image(image, 5)
    for command in ("index", "watch"):
        with pytest.raises(ModelMismatchError, match=refused):
            getattr(once(cheap, write=True), command)([tmp_path / "album"])
    assert once(cheap).status().images == 3


@pytest.mark.slow
def test_the_same_checkpoint_moved_still_loads(cheap, home: Path, tmp_path: Path) -> None:
    """Same files under another name: not refused; loading is tried (and fails here)."""
    moved = ModelInfo("/models/before-the-move", checkpoint_source(cheap.model), DIM)
    plant(home, unit_vectors(3), model=moved)
    with pytest.raises(Exception, match=WEIGHTS_FAILED):
        once(cheap).search_image(draw_photo(tmp_path / "query.jpg", seed=3), 5)


@pytest.mark.parametrize("command", ["index", "watch"])
def test_a_photo_folder_as_model_fails_with_what_a_checkpoint_holds(
    command, home: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    draw_photo(photos / "a.jpg", seed=1)
    settings = load_settings(environ={}, home=home, model=str(photos), backend="torch")
    with pytest.raises(ModelNotAvailableError) as caught:
        getattr(once(settings, write=True), command)([photos])
    assert f"{photos} is not a model checkpoint" in str(caught.value)
    assert "config.json and model.safetensors" in str(caught.value)
    assert "Errno" not in str(caught.value) and not home.exists()


def test_checkpoint_check_names_what_is_missing(tmp_path: Path, unloadable: Path) -> None:
    check_checkpoint(str(unloadable))  # a valid config is all it reads
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="is not a model checkpoint"):
        check_checkpoint(str(tmp_path / "empty"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"graph")
    with pytest.raises(ModelNotAvailableError, match="a vitsearch export missing its manifest"):
        check_checkpoint(str(export))
    (export / "vitsearch-export.json").write_text("{}")
    check_checkpoint(str(export))  # the export loader checks the manifest itself
    pickled = broken_weights_checkpoint(tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match=r"only pickle \.bin weights"):
        check_checkpoint(str(pickled))
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelNotAvailableError, match="is a 'bert' model"):
        check_checkpoint(str(pickled))
    with pytest.raises(ModelNotAvailableError, match="no model checkpoint directory"):
        check_checkpoint(str(tmp_path / "nowhere"))


def test_the_checkpoint_check_imports_neither_torch_nor_transformers() -> None:
    """The loader and the exports share its rules and file names, so it must stay cheap."""
    code = (
        "import sys\n"
        "import vitsearch.model.checkpoint\n"
        "print(sorted({'torch', 'transformers', 'huggingface_hub'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_search_on_a_new_home_says_so_before_the_model(cheap, home: Path, tmp_path: Path) -> None:
    image = draw_photo(tmp_path / "query.jpg", seed=3)
    with pytest.raises(EmptyLibraryError, match=f"there is no library at {home} yet"):
        once(cheap).search_image(image, 5)
    with pytest.raises(MissingFileError, match="no such image file"):
        once(cheap).search_image(tmp_path / "no-such.jpg", 5)
    with pytest.raises(MissingFileError, match="no such image file"):
        once(cheap).classify([tmp_path / "no-such.jpg"])
    assert not home.exists()


def test_embed_checks_out_and_its_inputs_before_the_model(
    cheap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unloadable model proves no load: each mistake is named, not a weights error."""
    photo = draw_photo(tmp_path / "photos" / "a.jpg", seed=1)
    (tmp_path / "empty").mkdir()
    mistakes = [
        ([photo], tmp_path / "e.csv", ConfigError, "must end in .npy or .parquet"),
        ([photo], tmp_path / "no" / "such" / "e.npy", MissingFileError, "no such folder for"),
        ([photo], tmp_path / "empty", ConfigError, "must end in"),
        ([tmp_path / "empty"], tmp_path / "e.npy", MissingFileError, "no photos found in"),
        ([tmp_path / "gone.jpg"], tmp_path / "e.npy", MissingFileError, "no such file"),
    ]
    for inputs, out, error, says in mistakes:
        with pytest.raises(error, match=says):
            once(cheap).embed_to_file(inputs, out)
    real_find_spec = importlib.util.find_spec  # the installed packages are the boundary
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pyarrow" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="needs pyarrow"):
        once(cheap).embed_to_file([photo], tmp_path / "e.parquet")
    assert not (tmp_path / "no").exists()


def test_messages_name_the_real_mistake(cheap, home: Path, tmp_path: Path) -> None:
    photo = draw_photo(tmp_path / "photos" / "a.jpg", seed=1)
    with pytest.raises(MissingFileError, match=f"is a file: index takes folders .*{photo.parent}"):
        once(cheap, write=True).index([photo])
    plant(home, unit_vectors(3), folder="/photos")
    with pytest.raises(MissingFileError, match=r"no such file: .*missing\.jpg"):
        once(cheap).similar(tmp_path / "missing.jpg", 3)
    with pytest.raises(NotIndexedError, match="is not in the library"):
        once(cheap).similar(photo, 3)  # on disk, not indexed
    for url in ["postgresql://me@db/photos", "postgres://db/photos"]:
        with pytest.raises(ConfigError, match=r"a home is a folder; .*use --store URL"):
            load_settings(environ={}, home=Path(url))


def test_a_library_runs_its_own_model_when_none_is_named(home: Path, tmp_path: Path) -> None:
    """Without --model, a library built with a local checkpoint is not asked the Hub's."""
    recorded = ModelInfo(name=str(tmp_path / "my-model"), fingerprint="sha256:abc", dim=DIM)
    plant(home, unit_vectors(3), folder="/photos", model=recorded)
    default = load_settings(environ={}, home=home)
    assert default.model == DEFAULT_MODEL
    with app.open_app(default) as reader:
        assert reader.settings.model == recorded.name
    named = default.replace(model=str(tmp_path / "other"))
    with app.open_app(named) as reader:
        assert reader.settings.model == named.model  # a model named is never replaced


def test_counts_are_in_words() -> None:
    assert [counted(n, "photo") for n in (0, 1, 2)] == ["0 photos", "1 photo", "2 photos"]
    assert counted(1, "copy", "copies") == "1 copy" and counted(3, "copy", "copies") == "3 copies"
    reused = Summary(new=2, embedded=1, reused=1, seconds=1.0)
    assert "1 copy reused an embedding" in reused.line()


def test_search_of_an_emptied_library_says_it_is_empty(cheap, home: Path) -> None:
    plant(home, unit_vectors(3), folder="/photos")
    once(cheap, write=True).forget_folder(Path("/photos"))
    with pytest.raises(EmptyLibraryError, match=f"the library at {home} is empty"):
        once(cheap).search_label("cat", 5)


def test_export_checks_its_packages_and_out_before_the_model(
    cheap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_model(cheap, tmp_path / "a-file")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the onnx extra not installed
    with pytest.raises(ConfigError, match="needs the onnxscript package"):
        export_model(cheap, tmp_path / "export")


# -- B. messages that tell the truth ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["search", "--label", "cat", "-k", "0"],
        ["search", "--label", "cat", "-k", "-3"],
        ["similar", "x.jpg", "-k", "0"],
        ["clusters", "--k", "0"],
    ],
)
def test_no_results_asked_for_is_a_usage_error(args: list[str], home: Path) -> None:
    result = run(*args, home=home)
    assert result.exit_code == 2, result.output
    assert "no results" not in result.output


def test_filters_that_pass_nothing_are_named(cheap, home: Path, tmp_path: Path) -> None:
    plant(home, unit_vectors(4), folder="/photos")
    image = draw_photo(tmp_path / "query.jpg", seed=3)
    with pytest.raises(NoMatchError, match="no photo passes these filters: under /elsewhere"):
        once(cheap).search_image(image, 5, Filters(under="/elsewhere"))  # before the model
    after = Filters(after=4102444800.0)  # 2100-01-01 UTC
    with pytest.raises(NoMatchError, match="taken on or after 2"):
        once(cheap).similar(Path("/photos/p00000.jpg"), 5, after)
    with pytest.raises(NoMatchError, match=r"score at least 1\.5"):
        once(cheap).similar(Path("/photos/p00000.jpg"), 5, Filters(min_score=1.5))
    assert len(once(cheap).similar(Path("/photos/p00000.jpg"), 5)) == 3


def test_cli_messages_on_a_new_home(home: Path) -> None:
    status = run("status", home=home)
    assert status.exit_code == 0 and "the library is empty; index some photos" in status.output
    labels = run("labels", home=home)
    assert labels.exit_code == 1 and f"there is no library at {home} yet" in labels.output
    taught = run("teach", "--list", home=home)
    assert "no taught labels yet; teach some with: vitsearch teach DIR" in taught.output
    forget = run("forget", "/photos", home=home)
    assert forget.exit_code == 1 and "it has no folders yet" in forget.output
    assert not home.exists()  # read commands (and a failed forget) made no files


def test_forget_names_the_library_folders_and_counts_in_words(home: Path) -> None:
    plant(home, unit_vectors(1), folder="/photos")
    plant(home, unit_vectors(2, seed=1), folder="/other", paths=["/other/a.jpg", "/other/b.jpg"])
    missing = run("forget", "/nowhere", home=home)
    assert missing.exit_code == 1
    assert "/nowhere is not in the library; its folders are: /other, /photos" in missing.output
    assert "removed 1 photo under /photos" in run("forget", "/photos", home=home).output
    assert "removed 2 photos under /other" in run("forget", "/other", home=home).output


def test_date_help_shows_the_format_not_strftime(home: Path) -> None:
    shown = run("search", "--help", home=home).output
    assert "--after YYYY-MM-DD[THH:MM:SS]" in shown and "%Y" not in shown
    bad = run("search", "--label", "cat", "--after", "June", home=home)
    assert bad.exit_code == 2 and "use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS" in bad.output
    assert "%Y" not in bad.output


def test_committed_one_photo_is_singular(home: Path, tmp_path: Path, caplog) -> None:
    draw_photo(tmp_path / "one" / "a.jpg", seed=1)
    caplog.set_level(logging.INFO, logger="vitsearch.indexer.reconcile")
    with open_library(home, write=True) as library:
        Indexer(library, embedder_factory=FakeEmbedder).reconcile([tmp_path / "one"])
    assert any(m.startswith("committed 1 photo (0 failed)") for m in caplog.messages)


# -- C. no files left behind ------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_first_run_leaves_no_files(cheap, home: Path, tmp_path: Path) -> None:
    draw_photo(tmp_path / "one" / "a.jpg", seed=1)
    with pytest.raises(Exception, match=WEIGHTS_FAILED):
        once(cheap, write=True).index([tmp_path / "one"])
    assert not home.exists()


def test_a_home_kept_for_other_files_loses_only_the_library(home: Path) -> None:
    (home / "exports").mkdir(parents=True)
    with open_library(home, write=True) as library:
        library.root_id("/photos")  # a folder, but no photo
    assert sorted(p.name for p in home.iterdir()) == ["exports"]
    assert writer_pid(home) is None


def test_a_library_with_a_photo_or_a_failure_stays(home: Path, tmp_path: Path) -> None:
    draw_photo(tmp_path / "one" / "a.jpg", seed=1)
    (tmp_path / "bad" / "b.jpg").parent.mkdir()
    (tmp_path / "bad" / "b.jpg").write_bytes(b"not a photo")
    for folder, name in [("one", "good"), ("bad", "failed")]:
        kept = home / name
        with open_library(kept, write=True) as library:
            Indexer(library, embedder_factory=FakeEmbedder).reconcile([tmp_path / folder])
        assert (kept / "library.sqlite3").is_file()
        with open_library(kept, write=True):
            pass  # a library that existed is never removed, even with nothing new
        assert (kept / "library.sqlite3").is_file()


def test_a_reader_of_a_new_home_creates_nothing_and_sees_a_writer_arrive(home: Path) -> None:
    with open_library(home) as reader:
        assert not reader.on_disk and reader.counts().images == 0
        assert len(reader.vectors) == 0 and reader.roots() == []
        assert not home.exists()
        with open_library(home, write=True):
            reader.refresh()  # the file exists while a writer runs...
            assert reader.on_disk
        reader.refresh()  # ...and went with it: that writer stored nothing
        assert not reader.on_disk and not home.exists()
        plant(home, unit_vectors(3), folder="/photos")
        reader.refresh()  # the app's long-lived reader
        assert reader.on_disk and reader.counts().images == 3
        assert len(reader.vectors) == 3


def test_a_removed_lock_file_is_taken_afresh(home: Path) -> None:
    first = WriterLock(home).acquire()
    first.release(remove=True)
    assert not first.path.exists()
    with WriterLock(home) as second:
        assert writer_pid(home) is not None and second.path.exists()


@pytest.mark.slow
def test_cheap_commands_never_import_torch(tmp_path: Path, unloadable: Path) -> None:
    """In a fresh interpreter, as a user runs them: none of these imports torch."""
    (tmp_path / "empty").mkdir()
    draw_photo(tmp_path / "photos" / "a.jpg", seed=1)
    model = ["--model", str(unloadable)]
    commands = [  # (arguments, what stderr says)
        (["index", str(tmp_path / "empty"), *model], ""),
        (["watch", str(tmp_path / "empty"), *model], ""),
        (["search", str(tmp_path / "photos" / "a.jpg"), *model], "there is no library at"),
        (["search", "/no/such.jpg", *model], "no such image file"),
        (["status"], ""),
        (["labels"], "there is no library at"),
        (["index", str(tmp_path / "empty"), "--model", str(tmp_path / "photos")], "not a model"),
        (
            ["index", str(tmp_path / "empty"), "--model", "google/vit-base-patch16-224"],
            "not cached",
        ),
        (["export", "--out", str(tmp_path / "photos" / "a.jpg"), *model], "is a file"),
        (["export", "--out", str(tmp_path / "photos"), *model], "is not empty"),
    ]
    script = (
        "import sys, signal, threading\n"
        "from vitsearch.cli import main\n"
        "threading.Timer(2.0, lambda: signal.raise_signal(signal.SIGTERM)).start()\n"  # watch
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    env = {**os.environ, "VITSEARCH_BACKEND": "torch", "VITSEARCH_PRECISION": "fp32"}
    home = tmp_path / "home"
    for args, says in commands:
        result = subprocess.run(
            [sys.executable, "-c", script, *args, "--home", str(home)],
            env=env,
            cwd=Path(__file__).parents[1],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.strip().endswith("no torch"), (args, result.stdout, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert not home.exists(), args
