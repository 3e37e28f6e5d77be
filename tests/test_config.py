"""Settings: defaults < VITSEARCH_* environment < flags, validated, and all documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vitsearch.cli import main
from vitsearch.config import Settings, env_var, load_settings, settings_help
from vitsearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETTINGS_DOC = ROOT / "docs" / "settings.md"  # the settings table


def test_precedence_defaults_env_flags(tmp_path: Path) -> None:
    environ = {
        "VITSEARCH_BATCH_SIZE": "8",
        "VITSEARCH_MODEL": "env-model",
        "VITSEARCH_HOME": str(tmp_path),
    }
    settings = load_settings(environ=environ, model="flag-model")
    assert settings.batch_size == 8
    assert settings.model == "flag-model"
    assert settings.home == tmp_path
    assert settings.precision == Settings().precision == "auto"


def test_none_flags_do_not_override_env() -> None:
    assert load_settings(environ={"VITSEARCH_THREADS": "1"}, threads=None).threads == 1


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        ({"VITSEARCH_BATCH_SIZE": "many"}, {}, "VITSEARCH_BATCH_SIZE='many' is not a valid int"),
        ({}, {"precision": "int3"}, "precision must be one of"),
        ({}, {"device": "tpu"}, "device must be one of"),
        ({}, {"threads": 0}, "threads must be at least 1"),
        ({"VITSEARCH_STORE": "mysql://me@db/photos"}, {}, "store must be empty"),
    ],
)
def test_bad_values_are_explained(environ: dict, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ, **flags)


def test_debug_from_env() -> None:
    assert load_settings(environ={"VITSEARCH_DEBUG": "1"}).debug is True
    assert load_settings(environ={"VITSEARCH_DEBUG": "0"}).debug is False


def test_every_setting_is_documented() -> None:
    table = SETTINGS_DOC.read_text()
    for name, help_text in settings_help().items():
        assert help_text, f"setting {name} has no help text"
        assert f"`{env_var(name)}`" in table, f"docs/settings.md does not document {env_var(name)}"


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = README.read_text()
    runner = CliRunner()
    for name, command in main.commands.items():
        assert command.help, f"command {name} has no help"
        assert runner.invoke(main, [name, "--help"]).exit_code == 0
        assert f"vitsearch {name}" in readme, f"README does not mention `vitsearch {name}`"
