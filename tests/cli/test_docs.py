"""README and the command line cannot drift apart: every command's --help has examples, and every
``fluxsr ...`` line of README.md and of those examples parses (run with --help appended: an option that
does not exist, or an argument too many, fails the parse before the help is shown)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fluxsr_cli.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def commands() -> dict[str, str]:
    """Every command and sub-command (the words that call it) -> its docstring."""
    found = {c.name: c.callback.__doc__ or "" for c in app.registered_commands}
    for group in app.registered_groups:
        found[group.name] = group.typer_instance.registered_callback.callback.__doc__ or ""
        found.update({f"{group.name} {c.name}": c.callback.__doc__ or ""
                      for c in group.typer_instance.registered_commands})
    return found


def help_text(words: list[str]) -> str:
    result = runner.invoke(app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def command_lines(text: str) -> list[str]:
    """``fluxsr ...`` and ``accelerate launch ... -m fluxsr_cli ...`` lines, continuation lines joined,
    comments and ``&&`` tails cut."""
    text = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for raw in text.splitlines():
        line = raw.strip().strip("│").strip()
        for part in re.split(r"&&|;", line):
            part = part.split(" #")[0].strip().strip("`")
            match = re.search(r"(?:^|\s)(fluxsr|-m fluxsr_cli)\s+([a-z].*)$", part)
            if match and not part.startswith(("pip ", "git ")):
                lines.append(match.group(2))
    return lines


def readme_lines() -> list[str]:
    """The command lines of README.md's shell code blocks (inline mentions may be fragments)."""
    shell, language = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            language = None if language is not None else line[3:].strip()
        elif language in ("bash", "sh", "console", ""):
            shell.append(line)
    return command_lines("\n".join(shell))


@pytest.mark.parametrize("name", commands())
def test_every_command_has_examples(name):
    assert "Examples:" in help_text(name.split()), f"fluxsr {name} --help has no Examples block"


def _parses(line: str) -> None:
    words = [w for w in shlex.split(line) if w != "..."]
    assert words and words[0] in {n.split()[0] for n in commands()} | {"--debug"}, f"`fluxsr {line}`: no command"
    result = runner.invoke(app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"`fluxsr {line}` does not parse:\n{result.output}"


def test_readme_has_command_lines():
    assert len(readme_lines()) >= 15


@pytest.mark.parametrize("line", readme_lines())
def test_every_readme_command_line_parses(line):
    _parses(line)


@pytest.mark.parametrize("name", commands())
def test_every_help_example_parses(name):
    """The examples as the docstring writes them (the rendered help wraps long lines)."""
    lines = command_lines(commands()[name].split("Examples:", 1)[-1])
    assert lines, f"fluxsr {name} --help shows no command line in its examples"
    for line in lines:
        _parses(line)


def test_a_wrong_option_does_not_parse():
    """The check itself: an option that does not exist fails even with --help appended."""
    with pytest.raises(AssertionError, match="does not parse"):
        _parses("upscale in.png -o out.png --no-such-option 3")
    with pytest.raises(AssertionError, match="no command"):
        _parses("nonsense in.png")
