"""Problems found in a plan, and the errors Partenza shows to people.

Everything here is standard library only: the client path and the cached boot
path import it without pulling in pydantic.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


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

    def __init__(self, problems: list[Problem]) -> None:
        count = len(problems)
        super().__init__(f"the plan has {count} problem{'s' if count != 1 else ''}")
        self.problems = problems


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word`, if one is close enough to suggest."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or an empty string."""
    match = did_you_mean(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
