"""The manifest reference, `docs/manifest.md`, generated from the models.

The pydantic models of `partenza.manifest` are the schema and their attribute
docstrings its reference text; this module turns them into markdown, after a
hand-written introduction. Regenerate the file after changing a model:

    python -m partenza.manifest_doc --write     # or: --check, or > FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from partenza import manifest as mf

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"
"""Where `--write` and `--check` find the reference in a source checkout."""

INTRODUCTION = """\
# Manifest reference

A **plan** is a folder. Every `*.toml` file in it, except `plan.toml` and
hidden files, is the manifest of one **module**: a long-lived program, what it
needs, and how Partenza supervises it. `plan.toml`, if present, holds settings
for the plan as a whole. `partenza validate PLAN` checks a plan and lists every
problem with its file, its field and the form that was expected; `partenza
plan PLAN` shows what would start, in which order, and why.

## Names, capabilities and what starts

A module is named after its file (`web.toml` is `web`) unless it sets `name`.
Names, of modules and of capabilities alike, are up to 64 lowercase letters,
digits, `-`, `_` or `.`, starting with a letter or a digit.

A module `provides` capabilities besides its own name. A name in
`requires`, `wants` or `after` is either a module's name, which always means
that module, or a capability, which means its *chosen* provider: the one named
by `prefer` in `plan.toml`, else the one with the highest `priority`, else the
first by name. A capability must not have the name of a module. Providers that
are not chosen are on *standby*: they do not start at boot, only on
`on_failure = "failover"` of the chosen one, by hand, or when another module
names them directly.

At boot Partenza starts every module that is neither on standby nor a
sidecar, together with everything those modules require or want and the
sidecars bound to them. They start in *waves*: a module's wave comes after
the waves of everything it requires, wants or starts after, and of its
sidecars. A `requires` that names nothing in the plan is an error; a `wants`
or an `after` that does is only a note. A dependency cycle is an error, shown
with the file and field of each of its edges.

A **sidecar** sets `sidecar = true` and is named in the `sidecars` of exactly
one target. It starts, and is ready, before its target, and does not start
unless its target does.

## Durations, sizes and placeholders

A **duration** is a string with a unit: `"500ms"`, `"1.5s"`, `"10s"`, `"2m"`,
`"1h"`. A bare number is refused, since it could mean seconds or milliseconds.

A **size** is a whole number of bytes (`16384`) or a string with a unit:
`"512KiB"`, `"4MiB"`, `"1GiB"` (powers of 1024) or `"500kB"`, `"8MB"`, `"1GB"`
(powers of 1000).

In `exec`, `env` values, `workdir`, `ready.command` and `ready.path`,
`${python}` stands for the Python interpreter that Partenza runs on and
`${plan_dir}` for the plan's folder as an absolute path.

Programs, working directories, users and groups are checked when the plan
is compiled. `partenza validate` always compiles. `partenza boot` and
`partenza plan` reuse the compiled plan of an earlier run while none of the
plan's TOML files has changed by a byte (it is cached under `cache/` in the
state folder, `PARTENZA_STATE_DIR`), and compile afresh with `--no-cache`.

## A complete example

A module, `api.toml`, that uses every table:

```toml
# api.toml: the module is called "api", after its file.
description = "the JSON API on 127.0.0.1:8080"
api_version = "1.0"
compatibility = "backward"
exec = ["${python}", "-u", "bin/api.py", "--port", "8080"]
workdir = "."
env = { API_DATA = "${plan_dir}/data", LOG_LEVEL = "info" }
provides = ["http-api"]
requires = ["db"]           # a capability: its chosen provider
wants = ["cache"]           # started first when the plan has it
after = ["migrate"]         # ordering only: not pulled in
sidecars = ["api-metrics"]  # api-metrics.toml says sidecar = true
priority = 10
on_failure = "shutdown"     # once restarts are spent

[ready]
kind = "tcp"
port = 8080
timeout = "15s"
interval = "200ms"

[restart]
policy = "on-failure"
delay = "500ms"
max_delay = "10s"
limit = 5
window = "1m"

[stop]
signal = "SIGTERM"
timeout = "5s"
```

Its sidecar, `api-metrics.toml`:

```toml
# api-metrics.toml
description = "forwards the API's metrics"
exec = "${python} -u bin/metrics.py --target http://127.0.0.1:8080/metrics"
sidecar = true

[ready]
kind = "log"
pattern = "^forwarding every \\\\d+s"
stream = "stdout"
```

And the plan's settings, `plan.toml`:

```toml
# plan.toml
name = "shop"
description = "the shop's API, its database and a cache"
prefer = { db = "postgres" }

[logs]
ring_lines = 2000
max_line = "16KiB"
file_size = "8MiB"
file_keep = 5
```
"""

_SECTIONS: list[tuple[str, str, type[BaseModel], str]] = [
    (
        "##",
        "Module manifest: `NAME.toml`",
        mf.Manifest,
        "Only `exec` is required.",
    ),
    ("###", "`ready`", mf._ReadyBase, ""),
    ("###", "`heartbeat`", mf.Heartbeat, "The `[heartbeat]` table."),
    ("###", "`health`", mf._HealthBase, ""),
    ("###", "`restart`", mf.Restart, "The `[restart]` table."),
    ("###", "`stop`", mf.Stop, "The `[stop]` table."),
    ("##", "Plan settings: `plan.toml`", mf.PlanSettings, "Every key is optional."),
    ("###", "`logs`", mf.LogSettings, "The `[logs]` table of `plan.toml`."),
    ("###", "`console`", mf.ConsoleSettings, "The `[console]` table of `plan.toml`."),
    ("###", "`rescue`", mf.RescueSettings, "The `[rescue]` table of `plan.toml`."),
]
"""Heading level, heading, model and a line after the model's own docstring."""

_READY_KINDS: list[type[BaseModel]] = list(
    typing.get_args(typing.get_args(mf.ReadyCheck)[0])
)
"""The models of the tagged union `ReadyCheck`, one per `kind`."""
_HEALTH_KINDS: list[type[BaseModel]] = list(
    typing.get_args(typing.get_args(mf.HealthCheck)[0])
)
"""The models of the tagged union `HealthCheck`, one per `kind`."""

_VALIDATED_FORMS = {
    mf._duration: "duration",
    mf._size: "size",
    mf._argv: "command",
    mf._signal: "signal name",
}
"""Words for the types that a `BeforeValidator` parses from a string."""

_PLAIN_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_TABLE_LINKS = {
    mf.Restart: "[restart](#restart)",
    mf.Stop: "[stop](#stop)",
    mf.Heartbeat: "[heartbeat](#heartbeat)",
    mf.ReadyStarted: "[ready](#ready)",
    mf.HealthExec: "[health](#health)",
    mf.LogSettings: "[logs](#logs)",
    mf.ConsoleSettings: "[console](#console)",
    mf.RescueSettings: "[rescue](#rescue)",
}


def reference() -> str:
    """The generated part of `docs/manifest.md`: one table per model."""
    parts = [
        "<!-- Generated from the attribute docstrings of partenza/manifest.py by "
        "`python -m partenza.manifest_doc --write`: edit those, not the text "
        "below. -->"
    ]
    for level, heading, model, extra in _SECTIONS:
        parts += ["", f"{level} {heading}", ""]
        if model is mf._ReadyBase:
            parts += _union_section(
                level,
                mf._ReadyBase,
                _READY_KINDS,
                "The `[ready]` table: when a module counts as ready, and how long "
                "that may take. Its `kind` is one of {kinds}; without the table a "
                "module is ready once started. Every kind takes these fields:",
            )
            continue
        if model is mf._HealthBase:
            parts += _union_section(
                level,
                mf._HealthBase,
                _HEALTH_KINDS,
                "The `[health]` table: a probe run again and again once the module "
                "is ready, one at a time. Its `kind` is one of {kinds}. Failed "
                "probes in a row make the module `degraded`, then restart it; a "
                "passing one makes it `ready` again. Every kind takes these fields:",
            )
            continue
        parts.append(_text(model.__doc__ or "") + (f" {extra}" if extra else ""))
        parts += ["", *_table(model, model.model_fields)]
    return "\n".join(parts) + "\n"


def document() -> str:
    """The whole of `docs/manifest.md`: the introduction, then the reference."""
    return INTRODUCTION + "\n" + reference()


def _union_section(
    level: str, base: type[BaseModel], members: list[type[BaseModel]], intro: str
) -> list[str]:
    common = base.model_fields
    kinds = ", ".join(f"`{_kind(model)}`" for model in members)
    lines = [intro.format(kinds=kinds), "", *_table(base, common)]
    for model in members:
        own = {n: f for n, f in model.model_fields.items() if n not in common}
        lines += ["", f'{level}# `kind = "{_kind(model)}"`', ""]
        lines += [_text(model.__doc__ or ""), "", *_table(model, own)]
    return lines


def _kind(model: type[BaseModel]) -> str:
    return str(typing.get_args(model.model_fields["kind"].annotation)[0])


def _table(model: type[BaseModel], fields: dict[str, FieldInfo]) -> list[str]:
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no docstring")
        cells = (
            f"`{name}`",
            _type_text(field.annotation, field.metadata),
            _default_text(field),
            _text(field.description),
        )
        rows.append(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        )
    return rows


def _text(docstring: str) -> str:
    """A docstring as one paragraph."""
    return " ".join(docstring.split())


def _type_text(annotation: Any, metadata: list[Any]) -> str:
    """The TOML type of a field in words: `duration`, `array of names`."""
    for item in metadata:
        if isinstance(item, BeforeValidator) and item.func in _VALIDATED_FORMS:
            return _VALIDATED_FORMS[item.func] + _bounds(metadata)
        if isinstance(item, FieldInfo):
            return _type_text(annotation, item.metadata)
        if getattr(item, "pattern", None) == mf.NAME_PATTERN:
            return "name"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], list(args[1:]))
    if origin is typing.Literal:
        return " or ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if all(_is_model(arg) for arg in members):
            first = members[0]
            return f"table ({_TABLE_LINKS.get(first, first.__name__)})"
        return " or ".join(_type_text(arg, []) for arg in members)
    if origin is list:
        return f"array of {_plural(_type_text(args[0], []))}"
    if origin is dict:
        key, value = (_type_text(arg, []) for arg in args)
        if key == "string":
            return f"table of {_plural(value)}"
        return f"table of {_plural(key)} to {_plural(value)}"
    if _is_model(annotation):
        return f"table ({_TABLE_LINKS.get(annotation, annotation.__name__)})"
    if annotation in _PLAIN_TYPES:
        return _PLAIN_TYPES[annotation] + _bounds(metadata)
    raise ValueError(f"no words for the type {annotation!r}")


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _plural(word: str) -> str:
    return word if word.endswith("s") else word + "s"


def _bounds(metadata: list[Any]) -> str:
    """The limits of a number in words: `, 1 to 65535`, `, at least 1`."""
    limits = {
        key: getattr(item, key)
        for item in metadata
        for key in ("ge", "le", "gt", "lt")
        if getattr(item, key, None) is not None
    }
    words = []
    if "ge" in limits and "le" in limits:
        words.append(f"{limits['ge']} to {limits['le']}")
    elif "ge" in limits:
        words.append(f"at least {limits['ge']}")
    elif "le" in limits:
        words.append(f"at most {limits['le']}")
    if "gt" in limits:
        words.append(f"more than {limits['gt']}")
    if "lt" in limits:
        words.append(f"less than {limits['lt']}")
    return f", {', '.join(words)}" if words else ""


def _default_text(field: FieldInfo) -> str:
    """The default as it would be written in TOML, or `required`."""
    if field.is_required():
        return "required"
    default = field.default
    forms = [
        _VALIDATED_FORMS[item.func]
        for item in field.metadata
        if isinstance(item, BeforeValidator) and item.func in _VALIDATED_FORMS
    ]
    if default is None:
        return "not set"
    if isinstance(default, BaseModel):
        kind = getattr(default, "kind", None)
        return f'`kind = "{kind}"`' if kind else "the defaults below"
    if forms == ["duration"]:
        return f"`{json.dumps(_duration_text(default))}`"
    if forms == ["size"]:
        return f"`{json.dumps(_size_text(default))}`"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, (str, int, float)):
        return f"`{json.dumps(default)}`"
    if isinstance(default, (list, dict)) and not default:
        return "`[]`" if isinstance(default, list) else "`{}`"
    raise ValueError(f"no TOML form for the default {default!r}")


def _duration_text(seconds: float) -> str:
    """`seconds` as a duration a manifest could hold: `100ms`, `30s`, `1m`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _size_text(size: int) -> str:
    """`size` with the largest binary unit that divides it: `16KiB`, `4MiB`."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def main(argv: list[str] | None = None) -> int:
    """Print the reference, write it to `docs/manifest.md`, or check that file."""
    parser = argparse.ArgumentParser(
        prog="python -m partenza.manifest_doc",
        description="Generate the manifest reference from the models.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {DOC_PATH}")
    group.add_argument(
        "--check", action="store_true", help=f"exit 1 if {DOC_PATH} is out of date"
    )
    args = parser.parse_args(argv)
    text = document()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text)
        return 0
    if args.check:
        try:
            current = DOC_PATH.read_text()
        except OSError:
            current = ""
        if current != text:
            sys.stderr.write(
                f"{DOC_PATH} is out of date; run python -m partenza.manifest_doc "
                "--write\n"
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
