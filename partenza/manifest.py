"""Module manifests and plan settings: TOML files validated into pydantic models.

A plan is a folder. Every `*.toml` file in it but `plan.toml` and hidden files
is the manifest of one module; `plan.toml`, if present, holds settings for the
plan as a whole. The models below are the schema: the attribute docstring under
each field is the reference text that `docs/manifest.md` is generated from.

Loading never raises for bad input. `load_manifest` and `load_settings` return
the model, or None and a list of `Problem`s that name the file, the field and
the expected form.
"""

from __future__ import annotations

import re
import shlex
import signal
import stat
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from partenza.errors import Problem, did_you_mean, suggestion
from partenza.units import (
    DURATION_FORM,
    format_duration,
    parse_duration,
    parse_size,
    visible,
)

MAX_DURATION = 30 * 24 * 3600.0
"""The longest duration a manifest may name."""
MAX_FILE = 1 << 20
"""The largest manifest read, in bytes."""
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
NAME_FORM = (
    "lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
API_VERSION = re.compile(r"^(\d+)\.(\d+)$")
SUPPORTED_API_MAJOR = 1


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PydanticCustomError(
            "duration",
            "expected {form}, got {value}",
            {"form": DURATION_FORM, "value": _toml_value(value)},
        )
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration",
            "expected {form}, got the bare number {value} "
            "(write {value}s or {value}ms)",
            {"form": DURATION_FORM, "value": repr(value)},
        )
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", str(exc)) from None
    if seconds > MAX_DURATION:
        raise PydanticCustomError(
            "duration",
            "expected at most {most}, got {value}",
            {"most": "30 days (720h)", "value": repr(value)},
        )
    return seconds


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise PydanticCustomError("size", str(exc)) from None


def _argv(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            error = str(exc)
            raise PydanticCustomError(
                "argv",
                "cannot split {value} like a shell would: {error}",
                {"value": repr(value), "error": error[:1].lower() + error[1:]},
            ) from None
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = list(value)
    else:
        raise PydanticCustomError(
            "argv",
            "expected a command as a list of strings or one string, got {value}",
            {"value": repr(value)},
        )
    if not argv or not argv[0]:
        raise PydanticCustomError("argv", "the command is empty")
    return argv


def _signal(value: Any) -> str:
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name in signal.Signals.__members__:
            return name
    raise PydanticCustomError(
        "signal",
        "expected a signal name like SIGTERM, SIGINT or SIGQUIT, got {value}",
        {"value": repr(value)},
    )


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error of a model-wide check, charged to one of the model's fields."""
    return PydanticCustomError(
        "field", "{message}", {"field": field, "message": message}
    )


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Argv = Annotated[list[str], BeforeValidator(_argv)]
SignalName = Annotated[str, BeforeValidator(_signal)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
        # TOML values are typed: "5" is no integer and "yes" no boolean.
        strict=True,
    )


class _ReadyBase(_Strict):
    timeout: Annotated[Duration, Field(gt=0)] = 30.0
    """How long the module may take to become ready before the start counts as
    failed and its process group is stopped."""
    interval: Annotated[Duration, Field(gt=0)] = 0.1
    """How often a polling check (tcp, exec, file) is tried while waiting."""


class ReadyStarted(_ReadyBase):
    """Ready as soon as the process has been started."""

    kind: Literal["started"]
    """`started`: the module is ready once its process exists."""


class ReadyTcp(_ReadyBase):
    """Ready when a TCP connection to host:port is accepted."""

    kind: Literal["tcp"]
    """`tcp`: the module is ready once a TCP port accepts a connection."""
    port: int = Field(ge=1, le=65535)
    """The TCP port to connect to, 1 to 65535."""
    host: str = "127.0.0.1"
    """The address to connect to."""


class ReadyExec(_ReadyBase):
    """Ready when a check command exits 0."""

    kind: Literal["exec"]
    """`exec`: the module is ready once a check command exits 0."""
    command: Argv
    """The check, as an argv list or a string split like a shell would, with
    `${python}` and `${plan_dir}` expanded and its program checked like `exec`.
    It runs with the module's environment and working directory, every
    `interval`."""


class ReadyFile(_ReadyBase):
    """Ready when a file appears."""

    kind: Literal["file"]
    """`file`: the module is ready once a path exists."""
    path: str
    """The path to wait for, which may use `${plan_dir}`; a relative path is
    taken from the working directory."""


class ReadyLog(_ReadyBase):
    """Ready when a line of the module's output matches a pattern."""

    kind: Literal["log"]
    """`log`: the module is ready once a line of its output matches."""
    pattern: str
    """A Python regular expression searched for in each output line."""
    stream: Literal["stdout", "stderr", "any"] = "any"
    """Which output to watch."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise PydanticCustomError(
                "regex", "not a valid regular expression: {error}", {"error": str(exc)}
            ) from None
        return value


class ReadyHandshake(_ReadyBase):
    """Ready when the module says so over the contract socket."""

    kind: Literal["handshake"]
    """`handshake`: the module is ready once it has said hello on
    `PARTENZA_SOCKET`, been welcomed, and sent `ready` (see docs/contract.md)."""


class ReadyNotify(_ReadyBase):
    """Ready when the module sends `READY=1`, as systemd's notify protocol has it."""

    kind: Literal["notify"]
    """`notify`: the module is ready once it sends `READY=1` to `NOTIFY_SOCKET`;
    programs written for systemd's `Type=notify` work unchanged."""


READY_KINDS = ("started", "tcp", "exec", "file", "log", "handshake", "notify")

ReadyCheck = Annotated[
    ReadyStarted
    | ReadyTcp
    | ReadyExec
    | ReadyFile
    | ReadyLog
    | ReadyHandshake
    | ReadyNotify,
    Field(discriminator="kind"),
]


class Heartbeat(_Strict):
    """Signs of life a module promises once it is ready."""

    interval: Annotated[Duration, Field(gt=0)]
    """The longest time between two signs of life; one more moment without one
    and the module is `hung`, and restarted under its restart policy."""
    via: Literal["contract", "watchdog"] = "contract"
    """`contract`: `heartbeat` messages on the contract socket; `watchdog`:
    `WATCHDOG=1` on `NOTIFY_SOCKET`, with `WATCHDOG_USEC` set to the interval,
    as systemd's watchdog has it."""


class _HealthBase(_Strict):
    interval: Annotated[Duration, Field(gt=0)] = 10.0
    """Time between the end of one probe and the start of the next; the first
    runs as soon as the module is ready."""
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    """A probe that takes longer has failed; a command still running is killed."""
    threshold: int = Field(default=3, ge=1, le=100_000)
    """Failed probes in a row that make the module `degraded`."""
    restart_after: int = Field(default=3, ge=0, le=100_000)
    """Further failed probes in a row, once degraded, after which the module is
    restarted under its restart policy; 0 never restarts it for its health."""
    start_period: Duration = 0.0
    """Failures this soon after the module became ready do not count."""


class HealthExec(_HealthBase):
    """Healthy while a command exits 0."""

    kind: Literal["exec"]
    """`exec`: a command run with the module's environment and working
    directory; exit 0 passes."""
    command: Argv
    """The probe, as an argv list or a string split like a shell would."""


class HealthTcp(_HealthBase):
    """Healthy while a TCP port accepts connections."""

    kind: Literal["tcp"]
    """`tcp`: a connection to host:port is accepted."""
    port: int = Field(ge=1, le=65535)
    """The TCP port, 1 to 65535."""
    host: str = "127.0.0.1"
    """The address to connect to."""


class HealthHttp(_HealthBase):
    """Healthy while an HTTP GET answers with a status in range."""

    kind: Literal["http"]
    """`http`: a GET of `url` answers with a status in `status`."""
    url: str
    """An `http://` URL, like `http://127.0.0.1:8080/health`."""
    status: str = "200-399"
    """The passing status codes: one (`204`) or a range (`200-299`)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^http://[^/\s:]+(:\d{1,5})?(/\S*)?$", value):
            raise PydanticCustomError(
                "url",
                "expected an http:// URL like http://127.0.0.1:8080/health, "
                "got {value}",
                {"value": repr(value)},
            )
        return value

    @field_validator("status")
    @classmethod
    def _status_range(cls, value: str) -> str:
        match = re.match(r"^([1-5]\d\d)(?:-([1-5]\d\d))?$", value)
        if not match or (match.group(2) and match.group(2) < match.group(1)):
            raise PydanticCustomError(
                "status",
                "expected a status code or range like 200 or 200-399, got {value}",
                {"value": repr(value)},
            )
        return value


HEALTH_KINDS = ("exec", "tcp", "http")

HealthCheck = Annotated[
    HealthExec | HealthTcp | HealthHttp, Field(discriminator="kind")
]


class Restart(_Strict):
    """When a module's process ends, whether and how soon to start it again."""

    policy: Literal["never", "on-failure", "always"] = "on-failure"
    """`never` (it stays down), `on-failure` (when it exits non-zero, is killed by
    a signal or fails its ready check) or `always` (whenever it ends, even with
    exit 0)."""
    delay: Duration = 0.1
    """The first restart's delay, for a process that ended within a second of
    starting; one that ran longer is started again at once. Each further
    restart within `window` doubles it, up to `max_delay`."""
    max_delay: Duration = 30.0
    """The longest delay between two starts; not shorter than `delay`."""
    limit: int = Field(default=5, ge=1, le=100_000)
    """At most this many starts within `window`; one more and the module has
    failed for good and its `on_failure` strategy applies."""
    window: Annotated[Duration, Field(gt=0)] = 60.0
    """The sliding window over which starts are counted."""

    @model_validator(mode="after")
    def _delays_ordered(self) -> Restart:
        if self.max_delay < self.delay:
            raise _field_error(
                "max_delay",
                f"{format_duration(self.max_delay)} is shorter than delay "
                f"({format_duration(self.delay)}); raise max_delay or lower delay",
            )
        return self


class Stop(_Strict):
    """How a module is stopped."""

    signal: SignalName = "SIGTERM"
    """The signal sent to the module's whole process group first."""
    timeout: Duration = 10.0
    """How long to wait after that signal before SIGKILL."""


class Manifest(_Strict):
    """One module: a long-lived program, what it needs and how to supervise it."""

    name: Name | None = None
    """The module's name, up to 64 lowercase letters, digits, `-`, `_` or `.`;
    the file's name without `.toml` when left out."""
    description: str = ""
    """One line saying what the module is for; shown by `status` and `plan`."""
    api_version: str = "1.0"
    """The Partenza API version the module speaks, `"MAJOR.MINOR"`; this
    orchestrator speaks major version 1."""
    compatibility: Literal["none", "backward", "forward", "both"] = "backward"
    """Which other minor versions of the same major the module also works with:
    `backward` (older), `forward` (newer), `both`, or `none` (only its own)."""
    exec: Argv
    """The program and its arguments, as a list or as one string split like a
    shell would (no shell runs it). `${python}` stands for the interpreter
    Partenza runs on and `${plan_dir}` for the plan's folder. The program must
    exist when the plan is compiled: a path with a `/` is taken from `workdir`,
    a bare name is looked up in `PATH`."""
    env: dict[str, str] = {}
    """Extra environment variables, on top of the orchestrator's own; the values
    are strings and may use `${python}` and `${plan_dir}`."""
    workdir: str | None = None
    """The working directory, absolute or relative to the plan's folder (the
    default); it must exist."""
    user: str | None = None
    """The user to run as, which must exist; only an orchestrator running as
    root can switch."""
    group: str | None = None
    """The group to run as, which must exist; defaults to the user's primary
    group."""
    provides: list[Name] = []
    """Capabilities this module provides, besides its own name. Modules that
    provide the same capability are alternatives: one is chosen."""
    requires: list[Name] = []
    """Hard dependencies, by module or capability: they must be ready before
    this module starts, and if one fails for good this module is blocked."""
    wants: list[Name] = []
    """Soft dependencies: started first and waited for, but their failure or
    absence does not stop this module."""
    after: list[Name] = []
    """Ordering only: if these are in the plan, start after they have settled;
    they are not pulled in."""
    sidecars: list[Name] = []
    """Sidecar modules bound to this one; each starts, and is ready, first. A
    sidecar is bound to one target only."""
    sidecar: bool = False
    """This module is a sidecar: it runs only for the target that names it in
    `sidecars`, and cannot have sidecars of its own."""
    binding: Literal["loose", "tight"] = "loose"
    """For a sidecar: `loose`, a crash restarts only itself; `tight`, its target
    is restarted with it. Either way a sidecar that fails for good blocks its
    target, as any failed requirement does."""
    critical: bool = False
    """The system cannot run without this module: when it fails for good the
    system enters rescue and the bluescreen takes the console."""
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    """Among providers of the same capability, the highest priority is chosen;
    ties go to the name first in alphabetical order."""
    ready: ReadyCheck = ReadyStarted(kind="started")
    """When the module counts as ready. Without this table: once started."""
    heartbeat: Heartbeat | None = None
    """Signs of life the module promises once ready; none when left out."""
    health: HealthCheck | None = None
    """A probe run again and again once the module is ready; none when left
    out."""
    requires_healthy: list[Name] = []
    """Hard dependencies that must also pass their health probe, not only be
    ready, before this module starts; each counts as in `requires` too."""
    check: Argv | None = None
    """A command that checks the module's configuration without starting it,
    as `nginx -t` does; `partenza validate` runs it."""
    check_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    """How long the check may take before it is killed and counts as failed."""
    network: Literal["host", "loopback", "none"] = "host"
    """The network the module needs: `host` (the host's own), `loopback` (a
    network namespace of its own with only a loopback interface) or `none` (a
    network namespace of its own with no interface up)."""
    root: bool = False
    """The module needs to run as root; an orchestrator that is not root shows
    it blocked, and `partenza validate` refuses it."""
    restart: Restart = Restart()
    """The restart policy, its backoff and its start limit."""
    stop: Stop = Stop()
    """The stop signal and timeout."""
    on_failure: (
        Literal["degrade", "failover", "shutdown", "bluescreen", "fallback"] | None
    ) = None
    """What to do once the module has failed for good: `degrade` (keep the rest
    running, mark the system degraded), `failover` (start the next provider of
    its capabilities), `shutdown` (stop the system in order), `bluescreen`
    (enter rescue on the console) or `fallback` (stop this plan in order and
    boot the plan's fallback plan). Defaults to `bluescreen` for a critical
    module and `degrade` otherwise."""

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        match = API_VERSION.match(value)
        if not match:
            raise PydanticCustomError(
                "api_version",
                'expected a version MAJOR.MINOR like "1.0", got {value}',
                {"value": repr(value)},
            )
        if int(match.group(1)) != SUPPORTED_API_MAJOR:
            raise PydanticCustomError(
                "api_version",
                "this orchestrator speaks API {major}.x; {value} has another major",
                {"major": SUPPORTED_API_MAJOR, "value": repr(value)},
            )
        return value

    @field_validator(
        "provides", "requires", "wants", "after", "sidecars", "requires_healthy"
    )
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise PydanticCustomError(
                    "repeat", "{name} is listed twice", {"name": repr(name)}
                )
            seen.add(name)
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not ENV_NAME.match(key)]
        if bad:
            names = ", ".join(repr(key) for key in bad)
            raise PydanticCustomError(
                "env_name",
                "{names} {verb} not a valid variable name (letters, digits and '_', "
                "not starting with a digit)",
                {"names": names, "verb": "is" if len(bad) == 1 else "are"},
            )
        return value

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if visible(value) != value or "\n" in value:
            raise PydanticCustomError(
                "one_line",
                "expected one line of text, without control characters, got {value}",
                {"value": repr(value[:60])},
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.critical and self.on_failure == "degrade":
            raise _field_error(
                "on_failure",
                "a critical module cannot degrade; drop on_failure (it then "
                "defaults to bluescreen) or set critical = false",
            )
        if self.sidecar and self.sidecars:
            raise _field_error("sidecars", "a sidecar cannot have sidecars of its own")
        if self.root and self.user not in (None, "root"):
            raise _field_error(
                "root", f"needs root but runs as {self.user!r}; drop one of them"
            )
        watchdog = self.heartbeat is not None and self.heartbeat.via == "watchdog"
        if watchdog and self.ready.kind == "handshake":
            raise _field_error(
                "heartbeat.via",
                "watchdog heartbeats come over NOTIFY_SOCKET; with handshake "
                'readiness use via = "contract"',
            )
        return self

    @property
    def failure_strategy(self) -> str:
        """`on_failure`, with its default filled in."""
        if self.on_failure:
            return self.on_failure
        return "bluescreen" if self.critical else "degrade"


class LogSettings(_Strict):
    """How module output is kept."""

    ring_lines: int = Field(default=1000, ge=10, le=1_000_000)
    """Lines of each module's output kept in memory for `logs` and the TUI."""
    max_line: Size = 16384
    """A longer line is split into pieces of this many bytes."""
    file_size: Size = 4 * 1024 * 1024
    """A module's log file is rotated when it reaches this size."""
    file_keep: int = Field(default=3, ge=0, le=1000)
    """Rotated log files kept per module (`web.log.1` ... `web.log.N`)."""


class ConsoleSettings(_Strict):
    """Who has the console while the plan runs."""

    mode: Literal["lines", "top"] = "lines"
    """What the console shows: `lines` (a progress line per change) or `top`
    (the full-screen `partenza top`, started on the console at boot)."""
    tty: str | None = None
    """The terminal that is the console, like `/dev/tty1` or `/dev/ttyS0`; the
    one `partenza boot` runs on when left out (`/dev/console` as PID 1)."""


class RescueSettings(_Strict):
    """The rescue shell that a critical failure opens on the console."""

    shell: bool = True
    """Open the rescue shell on the console after the bluescreen report; with
    false the report is printed and nothing more."""
    empty_password: Literal["refuse", "allow"] = "refuse"
    """When the shell runs as root and root's password is empty or locked:
    `refuse` the shell, or `allow` it without a password (for containers and
    development machines)."""


class PlanSettings(_Strict):
    """Settings of a plan as a whole, from the optional `plan.toml`."""

    name: Name | None = None
    """The plan's name; the folder's name when left out."""
    description: str = ""
    """One line saying what the plan is for."""
    prefer: dict[Name, Name] = {}
    """A chosen provider per capability, over priorities: `{ db = "postgres" }`.
    The capability must be provided by some module, and the module must be one
    of its providers."""
    logs: LogSettings = LogSettings()
    """How module output is kept."""
    main: Name | None = None
    """The module whose end is the end of the system, as in a container: when
    it finishes or fails for good everything stops, and `partenza boot` exits
    with its exit status (128 + the signal when a signal ended it)."""
    fallback: str | None = None
    """A plan folder (relative to this one) to boot instead when a module's
    `on_failure = "fallback"` fires: a minimal plan, say the logger, the
    console and the rescue path."""
    console: ConsoleSettings = ConsoleSettings()
    """Who has the console while the plan runs."""
    rescue: RescueSettings = RescueSettings()
    """The rescue shell after a critical failure."""


# Turning pydantic's errors into lines a person can act on.

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "float_type": "a number",
}


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the last element of `loc`, if there is one."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            return None
        field = current.model_fields.get(part)
        if field is None:
            # A tagged union puts the tag in the location: `ready.tcp.port`.
            return current
        current = _inner_model(field.annotation, loc, part)
    return current


def _inner_model(
    annotation: Any, loc: tuple[Any, ...], part: str
) -> type[BaseModel] | None:
    models = list(_models_in(annotation))
    index = loc.index(part)
    tag = loc[index + 1] if index + 1 < len(loc) else None
    for candidate in models:
        kind = candidate.model_fields.get("kind")
        if kind is None or typing.get_args(kind.annotation) == (tag,):
            return candidate
    return None


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models an annotation names, through unions, Optional and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _field_path(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    parts: list[str] = []
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
            continue
        # The tag of a tagged union (`ready.tcp.port`) is not a field.
        if (
            current is not None
            and part not in current.model_fields
            and parts
            and part in READY_KINDS + HEALTH_KINDS
        ):
            continue
        parts.append(str(part))
        if current is not None and part in current.model_fields:
            current = _inner_model(current.model_fields[part].annotation, loc, part)
        else:
            current = None
    return ".".join(parts)


def _toml_value(value: Any) -> str:
    """`value` as it would be written in TOML, roughly: `true`, `5`, `'web'`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _describe_error(error: Any, model: type[BaseModel]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    if kind == "extra_forbidden":
        holder = _model_at(model, loc)
        known = list(holder.model_fields) if holder else []
        hint = did_you_mean(str(loc[-1]), known)
        if hint:
            return f"unknown key (did you mean {hint!r}?)"
        return f"unknown key; expected one of: {', '.join(known)}"
    if kind == "missing":
        return "required but missing"
    if kind == "string_type" and isinstance(value, (int, float, bool)):
        shown = _toml_value(value)
        return f'expected a string, got {shown} (quote it: "{shown}")'
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {_toml_value(value)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = suggestion(str(value), choices)
        return f"expected one of {expected}, got {_toml_value(value)}{hint}"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        choices = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        tag = ctx.get("tag", value)
        return (
            f"unknown kind {tag!r}{suggestion(str(tag), choices)}; expected one of "
            f"{', '.join(choices)}"
        )
    if kind == "union_tag_not_found":
        kinds = HEALTH_KINDS if loc and loc[0] == "health" else READY_KINDS
        message = f"needs a `kind`: {', '.join(kinds)}"
        # A misspelt `kind` is the likeliest cause: say which key it was.
        for key in value if isinstance(value, dict) else ():
            if did_you_mean(str(key), ["kind"]):
                return f"{message}; unknown key {key!r} (did you mean 'kind'?)"
        return message
    if kind == "string_pattern_mismatch":
        return f"expected a name of {NAME_FORM}, got {_toml_value(value)}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        limit = error.get("ctx", {}).get(key)
        return f"expected {words} {limit}, got {_toml_value(value)}"
    return error["msg"][0].lower() + error["msg"][1:] if error["msg"] else kind


def problems_from(
    exc: ValidationError, file: str, model: type[BaseModel]
) -> list[Problem]:
    """One `Problem` per pydantic error, in a person's words."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "field":
            # A model-wide check names the field it is about.
            loc = (*loc, ctx["field"])
            message = ctx["message"]
        elif loc and loc[-1] == "[key]":
            # A table key that is not a name: `prefer = { DB = "pg" }`.
            loc = loc[:-1]
            message = _describe_error(error, model).replace(
                "expected a name", "expected a key that is a name", 1
            )
        else:
            message = _describe_error(error, model)
        field = _field_path(loc, model) if loc else None
        problems.append(Problem(file, field or None, message))
    return problems


_TOML_POSITION = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)")


def read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse one TOML file; a syntax error becomes a problem with its position."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, [Problem(shown, None, "cannot read: not a regular file")]
        if info.st_size > MAX_FILE:
            return None, [Problem(shown, None, _too_large(info.st_size))]
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        return None, [Problem(shown, None, f"cannot read: {exc.strerror}")]
    if len(data) > MAX_FILE:
        # It grew, or is not a file whose size stat knows (a pipe).
        return None, [Problem(shown, None, _too_large(None))]
    try:
        return tomllib.loads(data.decode("utf-8")), []
    except UnicodeDecodeError as exc:
        return None, [Problem(shown, None, f"not UTF-8 text (byte {exc.start})")]
    except RecursionError:
        return None, [Problem(shown, None, "TOML syntax error: nested too deeply")]
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", text)
        if where:
            shown = f"{shown}:{where.group(1)}:{where.group(2)}"
        elif text.endswith("(at end of document)"):
            lines = data.decode("utf-8").split("\n")
            shown = f"{shown}:{len(lines)}:{len(lines[-1]) + 1}"
        message = re.sub(_TOML_POSITION, "", text)
        if where and message.startswith("Cannot overwrite a value"):
            # tomllib says how, not what: name the key given twice.
            line = data.decode("utf-8").split("\n")[int(where.group(1)) - 1]
            key = line.split("=", 1)[0].strip()
            if key:
                message = f"{key!r} is set twice (give each key once)"
        return None, [Problem(shown, None, f"TOML syntax error: {message}")]


def _too_large(size: int | None) -> str:
    limit = f"at most {MAX_FILE // 1024} KiB"
    if size is None:
        return f"too large for a manifest ({limit})"
    return f"too large for a manifest: {size} bytes ({limit})"


def load_manifest(
    path: Path, shown: str | None = None
) -> tuple[Manifest | None, list[Problem]]:
    """Read and validate one module manifest.

    Args:
        path: The `.toml` file.
        shown: How to name the file in problems; `path` as given by default.
    """
    shown = shown or str(path)
    data, problems = read_toml(path, shown)
    if data is None:
        return None, problems
    return manifest_from(data, path, shown)


def manifest_from(
    data: dict[str, Any], path: Path, shown: str
) -> tuple[Manifest | None, list[Problem]]:
    """Validate the parsed TOML of the manifest `path`, named `shown`."""
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        return None, problems_from(exc, shown, Manifest)
    if manifest.name is None:
        stem = path.stem
        if not re.match(NAME_PATTERN, stem):
            return None, [
                Problem(
                    shown,
                    "name",
                    f"the file name {stem!r} is not a module name ({NAME_FORM}); "
                    "rename the file or set name",
                )
            ]
        manifest = manifest.model_copy(update={"name": stem})
    return manifest, []


def claimed_names(data: dict[str, Any]) -> list[str]:
    """The module name and capabilities that parsed TOML claims, as far as
    they read as names: what a manifest with problems was meant to provide."""
    claims = [data.get("name")]
    provides = data.get("provides")
    if isinstance(provides, list):
        claims += provides
    return [claim for claim in claims if isinstance(claim, str)]


def load_settings(
    path: Path, shown: str | None = None
) -> tuple[PlanSettings | None, list[Problem]]:
    """Read and validate a plan's `plan.toml`."""
    shown = shown or str(path)
    data, problems = read_toml(path, shown)
    if data is None:
        return None, problems
    try:
        return PlanSettings.model_validate(data), []
    except ValidationError as exc:
        return None, problems_from(exc, shown, PlanSettings)
