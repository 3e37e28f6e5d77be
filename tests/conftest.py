from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import PINNED_BACKEND, FakeEmbedder, save_tiny_vit
from vitsearch.config import load_settings

pytest_plugins = ["tests.server_fixtures"]  # PostgreSQL for the `server` tests (-m server)

# `pytestmark = pytest.mark.slow`, or a list of marks that starts with it
WHOLLY_SLOW = re.compile(r"^pytestmark = (\[\s*)?pytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m "not slow"`` does not even import a module whose every test is slow: those
    modules import torch and transformers (seconds), which the fast tier never needs."""
    if config.option.markexpr.replace(" ", "") != "notslow" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return True if WHOLLY_SLOW.search(collection_path.read_text(encoding="utf-8")) else None


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the user's library, model cache or network."""
    for name in list(os.environ):
        if name.startswith("VITSEARCH_") and not name.startswith("VITSEARCH_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("VITSEARCH_HOME", str(tmp_path / "default-home"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path, tiny_model: Path):
    return load_settings(
        environ={}, home=home, model=str(tiny_model), batch_size=4, threads=1, **PINNED_BACKEND
    )


@pytest.fixture
def cli_env(home: Path, tiny_model: Path) -> dict:
    """The environment a user's shell gives `vitsearch` subprocesses: this library, the tiny ViT."""
    return {
        **os.environ,
        "VITSEARCH_HOME": str(home),
        "VITSEARCH_MODEL": str(tiny_model),
        "VITSEARCH_THREADS": "1",
        "VITSEARCH_BACKEND": PINNED_BACKEND["backend"],
        "VITSEARCH_PRECISION": PINNED_BACKEND["precision"],
    }


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()
