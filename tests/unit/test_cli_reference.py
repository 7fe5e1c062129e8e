"""The command line documents itself: every command and option has help, and the shell
completions and the man page are generated from the same parser, checked by the shells and
by man itself."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cli.main import _parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Given the parser, return each command's parser by name."""
    [choices] = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return dict(choices.choices)


def undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    """Given a parser and its command line so far, yield each command, argument and option
    under it that has no help text."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest: choice.help for choice in action._choices_actions}
            for name, command in action.choices.items():
                if not helped.get(name):
                    yield f"{path} {name}"
                yield from undocumented(command, f"{path} {name}")
        elif not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_command_argument_and_option_has_help() -> None:
    assert list(undocumented(_parser(), "volkeep")) == []


def volkeep(*arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", *arguments], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_bash_completion_is_valid_and_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "volkeep"
    script.write_text(volkeep("completion", "bash"))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

    def complete(line: str) -> set[str]:
        words = line.split(" ")
        program = (
            f"source {script}\n"
            f"COMP_WORDS=({' '.join(repr(word) for word in words)}); "
            f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT={len(line)}\n"
            "_shtab_volkeep volkeep; printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        result = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return set(result.stdout.split())

    assert set(commands(_parser())) <= complete("volkeep ")
    assert "backup" in complete("volkeep ba")
    assert {"--volume", "--json", "--storage"} <= complete("volkeep list --")
    assert complete("volkeep --log-format ") == {"auto", "json", "console"}
    assert "_shtab_volkeep___state_dir_COMPGEN=_shtab_compgen_dirs" in script.read_text()


def test_the_zsh_completion_names_every_command_and_parses(tmp_path: Path) -> None:
    text = volkeep("completion", "zsh")
    assert text.startswith("#compdef volkeep")
    for name in commands(_parser()):
        assert f"\n    {name}:'" in text
    zsh = shutil.which("zsh")
    if zsh is not None:
        script = tmp_path / "_volkeep"
        script.write_text(text)
        syntax = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr


def test_the_man_page_renders_every_command_and_option(tmp_path: Path) -> None:
    page = tmp_path / "volkeep.1"
    page.write_text(volkeep("manpage"))
    text = page.read_text()
    assert text.startswith('.TH VOLKEEP "1" ')
    assert "\n.SH NAME\nvolkeep \\-" in text
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed: the roff structure is checked, not its rendering")
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rendered = subprocess.run(
        [groff, "-man", "-Tascii", str(page)], capture_output=True, text=True, check=True
    ).stdout
    plain = re.sub(".\b", "", rendered)  # groff's overstrike bold and underline
    for name, command in commands(_parser()).items():
        assert f"volkeep {name}" in plain
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):  # said once, for all
                assert all(option in plain for option in action.option_strings)
    assert "EXIT STATUS" in plain
