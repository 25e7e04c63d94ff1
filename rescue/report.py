"""The bluescreen: what failed, why, and what it holds up, on one 80x24 screen.

It is drawn from the module's record (`status` with `module`) and the system
record, in plain ASCII with no colour, so that it reads the same on a serial
line, a VGA console and a terminal emulator. It never takes more lines than
the screen has minus one, kept for the prompt that follows it.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from partenza.render import clock, failure_output

STAGES = {
    "starting": "the program could not be started",
    "ready check": "it did not become ready",
    "running": "it was started, then ended",
    "health": "a health check failed",
}
"""What each failure stage means, in words."""
HINTS = [
    ("why MODULE, logs MODULE", "what happened", "edit MODULE, reload", "mend it"),
    ("continue", "resume the boot", "sh", "a shell"),
    ("reboot, poweroff", "", "help", "every command"),
]


def printable(text: str) -> str:
    """`text` without control characters, which could drive the terminal."""
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?"
        for ch in text.replace("\t", "    ")
    )


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _left_fit(text: str, width: int) -> str:
    """Shorten from the left, for paths: the file name matters most."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def bluescreen(
    record: dict[str, Any] | None,
    system: dict[str, Any] | None,
    *,
    module: str,
    width: int = 80,
    height: int = 24,
    problem: str | None = None,
) -> list[str]:
    """The report's lines: no wider than `width - 1`, no more than `height - 1`.

    Args:
        record: The failed module's record, or None when it could not be had.
        system: The system record, or None.
        module: The module's name, as the bluescreen was asked for.
        problem: Why the records are missing (the orchestrator is unreachable,
            the module is unknown), shown in their place.
    """
    width = max(40, min(width, 120)) - 1
    height = max(12, height) - 1
    label = 10
    room = width - label - 2
    lines: list[str] = []

    def field(name: str, value: str, most: int = 2) -> None:
        wrapped = textwrap.wrap(printable(value), room, break_on_hyphens=False) or [""]
        if len(wrapped) > most:
            wrapped = [*wrapped[: most - 1], _fit(" ".join(wrapped[most - 1 :]), room)]
        for index, part in enumerate(wrapped):
            head = name if index == 0 else ""
            lines.append(f"  {head.ljust(label)}{part}".rstrip())

    failure = (record or {}).get("failure") or {}
    stamp = clock(failure.get("time") or time.time(), millis=False)
    title = f" PARTENZA RESCUE: {module} failed and is critical"
    if record is not None and not failure:
        title = f" PARTENZA RESCUE: {module} is {record['state']}"
    lines.append(_fit(title, width - len(stamp) - 1).ljust(width - len(stamp)) + stamp)
    lines.append(" " + "=" * (width - 1))
    if record is None:
        field("module", module)
        field("problem", problem or "no record of it", 3)
    else:
        description = record.get("description") or ""
        field("module", module + (f" - {description}" if description else ""), 1)
        field("state", f"{record['state']}: {record.get('reason') or ''}")
        if failure:
            stage = failure.get("stage") or "-"
            gloss = STAGES.get(stage)
            field("stage", f"{stage} ({gloss})" if gloss else stage, 1)
            field("error", failure.get("error") or "-")
            restarts = failure.get("restarts") or 0
            plural = "s" if restarts != 1 else ""
            field(
                "exit",
                f"{failure.get('exit') or '-'}, after {restarts} restart{plural}",
            )
            blocks = failure.get("blocks") or []
            field("blocked", ", ".join(blocks) if blocks else "nothing else", 2)
        else:
            field("failure", "none recorded: it has not failed for good", 1)
        # The whole path where two lines hold it: it is what one edits.
        path = printable(record.get("path") or record.get("file") or "-")
        path = _left_fit(path, 2 * room)
        for index in range(0, len(path), room):
            head = "manifest" if index == 0 else ""
            lines.append(f"  {head.ljust(label)}{path[index : index + room]}")
    if system is not None:
        state = "in rescue" if system["state"] == "rescue" else system["state"]
        field("system", f"{system['plan']} is {state}: {system['reason']}", 1)

    # The last output takes what is left, above the rule and the hints.
    footer = 1 + len(HINTS)
    logs = [f"{mark} {printable(text)}" for mark, text in failure_output(failure)]
    free = height - len(lines) - footer - 2
    if logs and free > 0:
        lines.append("")
        lines.append(f"  last output of {module}:")
        shown = logs[-free:]
        if len(shown) < len(logs):
            shown[0] = f"| ({len(logs) - len(shown) + 1} earlier lines not shown)"
        lines.extend(f"  {_fit(text, width - 2)}" for text in shown)
    lines.append(" " + "-" * (width - 1))
    for first, what, second, then in HINTS:
        # The module's own name where it fits the column, else the word MODULE.
        if len(first.replace("MODULE", module)) < 26:
            first = first.replace("MODULE", module)
        if len(second.replace("MODULE", module)) < 20:
            second = second.replace("MODULE", module)
        row = f"  {first:<26}{what:<17}{second:<20}{then}"
        lines.append(_fit(row, width).rstrip())
    return lines[:height]
