"""Problems found in a plan, and the errors Partenza shows to people.

Everything here is standard library only: the client path and the cached boot
path import it without pulling in pydantic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan, named by file and field."""

    file: str
    """The manifest (or plan.toml) the problem is in, as the user wrote its path."""
    field: str | None
    """The dotted field (`ready.port`), or None when the whole file is at fault."""
    message: str
    """What was expected and what came, in one line."""

    def __str__(self) -> str:
        if self.field:
            return f"{self.file}: {self.field}: {self.message}"
        return f"{self.file}: {self.message}"


class PartenzaError(Exception):
    """An error meant for a person: a problem and, where one helps, a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class PlanError(PartenzaError):
    """A plan that cannot be compiled; `problems` lists every reason."""

    def __init__(
        self, problems: list[Problem], modules: dict[str, Any] | None = None
    ) -> None:
        count = len(problems)
        super().__init__(f"the plan has {count} problem{'s' if count != 1 else ''}")
        self.problems = problems
        self.modules = modules or {}
        """The modules that compiled on their own (name to ModuleSpec), so that
        their requirements can be checked even though the plan cannot be."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word`, if one is close enough to suggest.

    Among difflib's close matches, only one that looks like a slip of the
    fingers is offered: the same first letter, one letter wrong, missing, extra
    or swapped, or one word inside the other. `bogus` is not taken for `logs`.
    """
    import difflib  # only when something was mistyped

    for match in difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6):
        if (
            match[:1] == word[:1]
            or _one_slip(word, match)
            or word in match
            or match in word
        ):
            return match
    return None


def _one_slip(a: str, b: str) -> bool:
    """Whether `a` and `b` differ by one letter changed, added, dropped, or by
    two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return a == b
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def suggestion(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or an empty string."""
    match = did_you_mean(word, choices)
    return f" (did you mean {match!r}?)" if match else ""


class RateLimit:
    """Lets a burst of `burst` complaints of one kind through, then one every
    `every` seconds; those held back in between are counted, so that the next
    one let through can say how many there were."""

    def __init__(self, every: float, burst: int) -> None:
        self.every = every
        self.burst = burst
        self._credit = float(burst)
        self._last = time.monotonic()
        self.held = 0
        """Complaints held back since the last one let through."""

    def allow(self) -> int | None:
        """None when this complaint is to be held back; otherwise how many were
        held back before it."""
        now = time.monotonic()
        self._credit = min(self.burst, self._credit + (now - self._last) / self.every)
        self._last = now
        if self._credit < 1:
            self.held += 1
            return None
        self._credit -= 1
        held, self.held = self.held, 0
        return held
