"""How states look: a glyph any console has, and a colour it can show.

Glyphs are ASCII, so a state reads the same on a VGA console, a serial line
with NO_COLOR set, or a screenshot; colours add to them, never replace them.

| state        | glyph | colour  |
| ------------ | ----- | ------- |
| ready        | `+`   | green   |
| initializing | `~`   | cyan    |
| restarting   | `^`   | yellow  |
| stopping     | `v`   | yellow  |
| stopped      | `-`   | dim     |
| inactive     | `.`   | dim     |
| degraded     | `!`   | yellow  |
| hung         | `?`   | red     |
| failed       | `X`   | red     |
| blocked      | `#`   | magenta |
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rich.style import Style
from textual.scrollbar import ScrollBarRender

GLYPHS = {
    "ready": "+",
    "initializing": "~",
    "restarting": "^",
    "stopping": "v",
    "stopped": "-",
    "inactive": ".",
    "degraded": "!",
    "hung": "?",
    "failed": "X",
    "blocked": "#",
}
STYLES = {
    "ready": Style(color="green"),
    "initializing": Style(color="cyan"),
    "restarting": Style(color="yellow"),
    "stopping": Style(color="yellow"),
    "stopped": Style(dim=True),
    "inactive": Style(dim=True),
    "degraded": Style(color="yellow", bold=True),
    "hung": Style(color="red", bold=True),
    "failed": Style(color="red", bold=True),
    "blocked": Style(color="magenta", bold=True),
}
SYSTEM_STYLES = {
    "starting": Style(color="cyan", bold=True),
    "running": Style(color="green", bold=True),
    "degraded": Style(color="yellow", bold=True, reverse=True),
    "rescue": Style(color="red", bold=True, reverse=True),
    "stopping": Style(color="yellow", bold=True),
}
DIM = Style(dim=True)
BOLD = Style(bold=True)
ALERT = Style(color="red", bold=True, reverse=True)
MATCH = Style(reverse=True, bold=True)
STDERR = Style(color="yellow")
NOTE = Style(color="cyan", dim=True)

SMALL_TERMINALS = ("linux", "vt100", "vt102", "vt220", "vt320", "ansi", "cons25")
"""Terminals with 8 or 16 colours and no clipboard escape."""


def glyph(state: str) -> str:
    return GLYPHS.get(state, "?")


def state_style(state: str) -> Style:
    return STYLES.get(state, BOLD)


def small_terminal(env: Mapping[str, str] | None = None) -> bool:
    """Whether the terminal has only the 8 or 16 colours of a console.

    The Linux console, serial terminals and plain `xterm` qualify; a terminal
    that says it has 256 colours or true colour does not.
    """
    env = os.environ if env is None else env
    term = env.get("TERM", "")
    if env.get("COLORTERM", "") in ("truecolor", "24bit"):
        return False
    if "256color" in term or "direct" in term:
        return False
    base = term.split("-")[0]
    return base in SMALL_TERMINALS or base in ("xterm", "screen", "tmux", "")


def has_clipboard_escape(env: Mapping[str, str] | None = None) -> bool:
    """Whether the terminal may take text for the clipboard (OSC 52)."""
    env = os.environ if env is None else env
    term = env.get("TERM", "")
    return term.split("-")[0] not in (*SMALL_TERMINALS, "dumb", "")


LINE_DRAWING_LESS = ("vt100", "vt102", "vt220", "vt320", "ansi")
"""Terminals with no line-drawing characters to show UTF-8 box drawing with."""
NO_ALTERNATE_SCREEN = ("linux", *LINE_DRAWING_LESS)
"""Terminals whose screen is not given back when a full-screen program ends."""


def _base(env: Mapping[str, str] | None) -> str:
    env = os.environ if env is None else env
    return env.get("TERM", "").split("-")[0]


def plain_ascii_terminal(env: Mapping[str, str] | None = None) -> bool:
    return _base(env) in LINE_DRAWING_LESS


def keeps_no_screen(env: Mapping[str, str] | None = None) -> bool:
    return _base(env) in NO_ALTERNATE_SCREEN


def ascii_lines() -> None:
    """Draw borders and the tree's guides with ASCII, for a vt100."""
    from textual import _border
    from textual.widgets import Tree

    ascii_chars = _border.BORDER_CHARS["ascii"]
    ascii_places = _border.BORDER_LOCATIONS["ascii"]
    for name, rows in list(_border.BORDER_CHARS.items()):
        if any(not ch.isascii() for row in rows for ch in row):
            _border.BORDER_CHARS[name] = ascii_chars
            _border.BORDER_LOCATIONS[name] = ascii_places
    guides = ("  ", "| ", "`-", "|-")
    Tree.LINES = {"default": guides, "bold": guides, "double": guides}


def whole_cell_scrollbars() -> None:
    """Draw scrollbar thumbs in whole cells: a console font has no eighth blocks."""
    ScrollBarRender.VERTICAL_BARS = [" "] * 8
    ScrollBarRender.HORIZONTAL_BARS = [" "] * 8
