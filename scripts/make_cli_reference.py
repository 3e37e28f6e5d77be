"""Write docs/cli.md from the ``--help`` of every vitsearch command.

    python3 scripts/make_cli_reference.py          # rewrite docs/cli.md
    python3 scripts/make_cli_reference.py --check  # exit 1 if docs/cli.md is out of date

tests/test_docs.py runs the check, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from vitsearch.cli import main

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
WIDTH = 100  # fixed, so the text does not depend on the terminal it is made in


def help_text(*args: str) -> str:
    """One command's ``--help``, as ``vitsearch ARGS --help`` prints it."""
    runner = CliRunner()
    result = runner.invoke(main, [*args, "--help"], prog_name="vitsearch", terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output.rstrip() + "\n"


def reference() -> str:
    """The whole of docs/cli.md."""
    parts = [
        "# CLI reference\n\n",
        "<!-- Generated from each command's --help by `python3 scripts/make_cli_reference.py`;\n"
        "     do not edit by hand: tests/test_docs.py fails when it is out of date. -->\n\n",
        "Every command below, as `vitsearch COMMAND --help` prints it. What the commands do, in\n"
        "prose: [commands.md](commands.md); every setting: [settings.md](settings.md).\n",
    ]
    for args in [(), *((name,) for name in sorted(main.commands))]:
        title = " ".join(("vitsearch", *args))
        parts.append(f"\n## {title}\n\n```text\n{help_text(*args)}```\n")
    return "".join(parts)


if __name__ == "__main__":
    text = reference()
    if "--check" in sys.argv[1:]:
        sys.exit(0 if OUT.read_text() == text else f"{OUT} is out of date: run {sys.argv[0]}")
    OUT.write_text(text)
    print(f"wrote {OUT}")
