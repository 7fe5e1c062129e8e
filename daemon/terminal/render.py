"""Small pieces of terminal output shared by the CLI's tables and lines: plurals, colour
for what must stand out (only on a terminal, never with NO_COLOR), and cells that fit."""

from __future__ import annotations

import os
import sys

RED = "\033[1;31m"
RESET = "\033[0m"


def plural(count: int, word: str, many: str | None = None) -> str:
    """Given a count and a noun, return "1 policy" or "2 policies"."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or (word[:-1] + 'ies' if word.endswith('y') else word + 's')}"


def paint(text: str) -> str:
    """Given a word that must stand out (FAILED), return it in red on a terminal that
    allows colour (https://no-color.org), as it is elsewhere."""
    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        return text
    return f"{RED}{text}{RESET}"


def fit(text: str, width: int) -> str:
    """Given a cell and the width left for it, return it cut with "…" if it is longer."""
    if width < 1 or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"
