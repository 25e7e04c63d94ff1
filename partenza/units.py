"""Durations and sizes as people write them in manifests: `500ms`, `10s`, `4MiB`."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|kB|MB|GB)?\s*$")
_SIZE_SCALE = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}

_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))
}


def visible(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x1b`), so that what
    a module writes can never move the cursor or clear the screen of whoever
    reads it. Tabs are kept."""
    return text.translate(_CONTROLS)


DURATION_FORM = "a duration like 500ms, 10s or 2m"
SIZE_FORM = "a size like 512KiB, 4MiB or 1GiB"


def parse_duration(text: str) -> float:
    """Seconds in `text` (`500ms`, `1.5s`, `2m`, `1h`).

    Raises:
        ValueError: `text` is not of that form; the message says the form.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected {DURATION_FORM}, got {text!r}")
    return float(match.group(1)) * _DURATION_SCALE[match.group(2)]


def parse_size(text: str | int) -> int:
    """Bytes in `text` (`4096`, `512KiB`, `4MiB`).

    Raises:
        ValueError: `text` is not of that form; the message says the form.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"expected {SIZE_FORM}, got {text!r}")
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected {SIZE_FORM}, got {text!r}")
    return int(float(match.group(1)) * _SIZE_SCALE[match.group(2)])


def plural(count: int, word: str) -> str:
    """`1 wave`, `2 waves`, `2 processes`."""
    if count == 1:
        return f"{count} {word}"
    ending = "es" if word.endswith(("s", "x", "ch", "sh")) else "s"
    return f"{count} {word}{ending}"


def format_duration(seconds: float) -> str:
    """A short human form of `seconds`: `40ms`, `2.5s`, `3m12s`, `2h05m`."""
    seconds = max(0.0, seconds)
    # Each bound is where the shorter form would round up to the next unit.
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 9.95:
        return f"{seconds:.2g}s" if seconds < 1.95 else f"{seconds:.1f}s"
    if seconds < 60:
        # Minutes are truncated below, so 59.7s is 59s rather than 60s.
        return f"{min(round(seconds), 59)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
