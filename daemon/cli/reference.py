"""The command line's reference, generated from its parser: shell completions (bash, zsh)
by shtab, and the man page (roff) by argparse-manpage. `install.sh` installs them; a
command or option added to the parser is in both at the next install."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from daemon import __version__

# shtab and argparse-manpage are imported by the two commands that use them: every other
# command's start would pay for them (issue 20: a repeat backup's start)

SHELLS = ("bash", "zsh")
# A roff request or macro call at the start of a line: what argparse-manpage writes.
REQUEST = re.compile(r"\.(?:[A-Z]{1,2}|br|nf|fi|sp|in|ti)(?:\s|$)")
# The sections of the man page after the options, in roff.
MANUAL_SECTIONS = r""".SH ENVIRONMENT
.TP
.B VOLKEEP_CONFIG
the policy file or directory when \fB\-\-config\fR is not given (else /etc/volkeep)
.TP
.B VOLKEEP_STATE_DIR
the state dir when \fB\-\-state\-dir\fR is not given (else /var/lib/volkeep)
.SH FILES
.TP
.I /etc/volkeep/*.yaml
the policy files (\fBvolkeep schema\fR prints their JSON Schema)
.TP
.I /var/lib/volkeep
the run history, the daemon's pid and heartbeat
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR docker (1)
"""


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Given a parser, yield its actions and those of every command under it."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from _actions(command)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """Given the parser and a shell of SHELLS, return the shell's completion script: the
    commands, options and choices, directory names for an option named *dir, and file
    names for one that takes a Path or a FILE."""
    import shtab

    for action in _actions(parser):
        if action.dest.endswith("dir"):
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]  # read by shtab
        elif action.type is Path or action.metavar == "FILE":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


def manual_page(parser: argparse.ArgumentParser) -> str:
    """Given the parser (its epilog says the exit status), return the man page volkeep(1)
    in roff."""
    from argparse_manpage.manpage import Manpage

    exit_status, parser.epilog = parser.epilog or "", None  # a section of its own, below
    page = Manpage(parser)
    page.source = f"volkeep {__version__}"
    page.manual = "volkeep manual"
    page.description = "scheduled backups of Docker volumes, with restore drills"
    status = exit_status.removeprefix("exit status: ").replace("\\", "\\e").replace("-", "\\-")
    lines = [_as_text(line) for line in str(page).rstrip().splitlines()]
    return "\n".join(lines) + f"\n.SH EXIT STATUS\n{status}\n{MANUAL_SECTIONS}"


def _as_text(line: str) -> str:
    """Given a line of argparse-manpage's roff, return it with a help text's line that
    starts with ' or . (a quoted 'uploads/2024/' wrapped to a line's start) kept as text:
    roff would read it as a request."""
    if line.startswith("'") or (line.startswith(".") and not REQUEST.match(line)):
        return "\\&" + line
    return line
