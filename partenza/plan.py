"""Compile a plan folder into a `Plan`: providers chosen, edges resolved, waves.

The compiled form is plain dataclasses that round-trip through JSON, so a boot
from the cache (`partenza.cache`) needs neither TOML parsing nor pydantic.

Edges point from the module that declares them to the module they resolve to:
`worker -> web` for `requires = ["web"]` in `worker.toml`. A name in `requires`,
`wants` or `after` is a module's name or a capability; a capability resolves to
its chosen provider. Every module provides its own name.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from partenza.errors import PlanError, Problem, suggestion
from partenza.paths import which

COMPILER_VERSION = 6
"""Bumped whenever the compiled form changes, so old cache entries are missed."""
SETTINGS_FILE = "plan.toml"
EDGE_KINDS = ("requires", "wants", "after", "sidecar")
HARD_KINDS = ("requires", "sidecar")


@dataclass(frozen=True, slots=True)
class ReadySpec:
    """When a module counts as ready; see `partenza.manifest.ReadyCheck`."""

    kind: str = "started"
    timeout: float = 30.0
    interval: float = 0.1
    host: str = ""
    port: int = 0
    command: tuple[str, ...] = ()
    path: str = ""
    pattern: str = ""
    stream: str = "any"

    def describe(self) -> str:
        """The check in a few words: `tcp 127.0.0.1:8080`, `log /listening/`."""
        if self.kind == "tcp":
            return f"tcp {self.host}:{self.port}"
        if self.kind == "exec":
            return "exec " + shlex.join(self.command)
        if self.kind == "file":
            return f"file {self.path}"
        if self.kind == "log":
            return f"log /{self.pattern}/"
        if self.kind == "handshake":
            return "handshake (says ready on the contract socket)"
        if self.kind == "notify":
            return "notify (sends READY=1)"
        return "process started"


@dataclass(frozen=True, slots=True)
class RestartSpec:
    """A restart policy; see `partenza.manifest.Restart`."""

    policy: str = "on-failure"
    delay: float = 0.1
    max_delay: float = 30.0
    limit: int = 5
    window: float = 60.0

    def delay_for(self, starts_in_window: int) -> float:
        """The backoff before the next start, given the starts already counted."""
        exponent = max(0, starts_in_window - 1)
        return min(self.max_delay, self.delay * (2 ** min(exponent, 32)))


@dataclass(frozen=True, slots=True)
class StopSpec:
    """How a module is stopped; see `partenza.manifest.Stop`."""

    signal: str = "SIGTERM"
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class LogSpec:
    """How module output is kept; see `partenza.manifest.LogSettings`."""

    ring_lines: int = 1000
    max_line: int = 16384
    file_size: int = 4 * 1024 * 1024
    file_keep: int = 3


@dataclass(frozen=True, slots=True)
class HeartbeatSpec:
    """Signs of life; see `partenza.manifest.Heartbeat`."""

    interval: float
    via: str = "contract"


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """A health probe; see `partenza.manifest.HealthCheck`."""

    kind: str
    interval: float = 10.0
    timeout: float = 2.0
    threshold: int = 3
    restart_after: int = 3
    start_period: float = 0.0
    command: tuple[str, ...] = ()
    host: str = ""
    port: int = 0
    url: str = ""
    status: str = "200-399"

    def describe(self) -> str:
        """The probe in a few words: `http http://127.0.0.1:8080/health`."""
        if self.kind == "exec":
            return "exec " + shlex.join(self.command)
        if self.kind == "tcp":
            return f"tcp {self.host}:{self.port}"
        return f"http {self.url}"

    def passes(self, status: int) -> bool:
        """Whether an HTTP status is in the passing range."""
        low, _, high = self.status.partition("-")
        return int(low) <= status <= int(high or low)


@dataclass(frozen=True, slots=True)
class ConsoleSpec:
    """Who has the console; see `partenza.manifest.ConsoleSettings`."""

    mode: str = "lines"
    tty: str | None = None


@dataclass(frozen=True, slots=True)
class RescueSpec:
    """The rescue shell; see `partenza.manifest.RescueSettings`."""

    shell: bool = True
    empty_password: str = "refuse"


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """One module as compiled: paths absolute, placeholders expanded."""

    name: str
    file: str
    argv: tuple[str, ...]
    workdir: str
    description: str = ""
    api_version: str = "1.0"
    compatibility: str = "backward"
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    group: str | None = None
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    sidecars: tuple[str, ...] = ()
    sidecar: bool = False
    binding: str = "loose"
    critical: bool = False
    priority: int = 0
    ready: ReadySpec = ReadySpec()
    restart: RestartSpec = RestartSpec()
    stop: StopSpec = StopSpec()
    on_failure: str = "degrade"
    heartbeat: HeartbeatSpec | None = None
    health: HealthSpec | None = None
    requires_healthy: tuple[str, ...] = ()
    check: tuple[str, ...] = ()
    check_timeout: float = 10.0
    network: str = "host"
    root: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency between two modules, and who declared it."""

    src: str
    """The module whose manifest declares the edge; it starts second."""
    dst: str | None
    """The module `via` resolved to; None for a soft edge to something absent."""
    kind: str
    """`requires`, `wants`, `after` or `sidecar`."""
    via: str
    """The name as written: a module or a capability."""
    file: str
    """The manifest that declares it."""
    healthy: bool = False
    """A hard edge whose target must also pass its health probe."""

    @property
    def hard(self) -> bool:
        return self.kind in HARD_KINDS

    def why(self) -> str:
        """Where the edge comes from: `worker.toml: requires "web"`."""
        field_name = "sidecars" if self.kind == "sidecar" else self.kind
        if self.healthy:
            field_name = "requires_healthy"
        return f'{self.file}: {field_name} "{self.via}"'


@dataclass
class Plan:
    """A compiled plan: everything the orchestrator needs to boot."""

    name: str
    dir: str
    digest: str
    modules: dict[str, ModuleSpec]
    providers: dict[str, list[str]]
    """Each capability some module provides, to its providers, chosen first."""
    choices: dict[str, str]
    """Each capability to the reason its first provider was chosen."""
    edges: list[Edge]
    waves: list[list[str]]
    """The modules to start at boot, in waves: each depends only on earlier ones."""
    standby: list[str]
    """Providers that were not chosen; they start only on failover or by hand."""
    notes: list[Problem] = field(default_factory=list)
    """Warnings: things that are allowed but worth knowing."""
    description: str = ""
    logs: LogSpec = LogSpec()
    console: ConsoleSpec = ConsoleSpec()
    rescue: RescueSpec = RescueSpec()
    fallback: str | None = None
    """The fallback plan's folder, absolute."""
    main: str | None = None
    """The module whose end ends the system, if the plan names one."""

    @property
    def active(self) -> list[str]:
        return [name for wave in self.waves for name in wave]

    def resolve(self, name: str) -> str | None:
        """The module a dependency name stands for right now, if any."""
        if name in self.modules:
            return name
        chosen = self.providers.get(name)
        return chosen[0] if chosen else None

    def edges_from(self, module: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.src == module]

    def edges_to(self, module: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.dst == module]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["compiler"] = COMPILER_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan written by `to_json`.

        Raises:
            ValueError: the data is from another compiler version or malformed.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("compiler") != COMPILER_VERSION:
            raise ValueError("compiled by another version")
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed compiled plan: {exc!r}") from None

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Plan:
        modules = {}
        for name, raw in data["modules"].items():
            raw = dict(raw)
            for key in (
                "argv",
                "provides",
                "requires",
                "wants",
                "after",
                "sidecars",
                "requires_healthy",
                "check",
            ):
                raw[key] = tuple(raw[key])
            ready = dict(raw["ready"])
            ready["command"] = tuple(ready["command"])
            raw["ready"] = ReadySpec(**ready)
            if raw["heartbeat"] is not None:
                raw["heartbeat"] = HeartbeatSpec(**raw["heartbeat"])
            if raw["health"] is not None:
                health = dict(raw["health"])
                health["command"] = tuple(health["command"])
                raw["health"] = HealthSpec(**health)
            raw["restart"] = RestartSpec(**raw["restart"])
            raw["stop"] = StopSpec(**raw["stop"])
            modules[name] = ModuleSpec(**raw)
        return cls(
            name=data["name"],
            dir=data["dir"],
            digest=data["digest"],
            modules=modules,
            providers=data["providers"],
            choices=data["choices"],
            edges=[Edge(**edge) for edge in data["edges"]],
            waves=data["waves"],
            standby=data["standby"],
            notes=[Problem(**note) for note in data["notes"]],
            description=data["description"],
            logs=LogSpec(**data["logs"]),
            console=ConsoleSpec(**data["console"]),
            rescue=RescueSpec(**data["rescue"]),
            fallback=data["fallback"],
            main=data["main"],
        )


def manifest_files(folder: Path) -> tuple[list[Path], Path | None]:
    """The module manifests of a plan folder, sorted, and its `plan.toml`.

    Hidden files are skipped: editors leave `.#web.toml` locks and the like.
    """
    files = sorted(
        p
        for p in folder.glob("*.toml")
        if p.name != SETTINGS_FILE and not p.name.startswith(".")
    )
    settings = folder / SETTINGS_FILE
    return files, settings if settings.exists() else None


def plan_digest(folder: Path) -> str:
    """A hash of everything a compiled plan depends on: every TOML file's bytes,
    the compiler version, the interpreter `${python}` expands to, and the folder
    (resolved for `${plan_dir}`, and as given, which problems and `file` show)."""
    files, settings = manifest_files(folder)
    digest = hashlib.sha256()
    digest.update(f"partenza-plan {COMPILER_VERSION} {sys.executable}\0".encode())
    digest.update(str(folder.resolve()).encode() + b"\0")
    digest.update(str(folder).encode() + b"\0")
    for path in [*files, *([settings] if settings else [])]:
        try:
            data = path.read_bytes()
        except OSError:
            data = b"\xff unreadable"
        digest.update(
            path.name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data
        )
    return digest.hexdigest()[:32]


def compile_plan(folder: Path | str) -> Plan:
    """Read every manifest of `folder` and compile the plan.

    Raises:
        PlanError: with every problem found, each naming its file and field.
    """
    # Imported here: a cached boot never needs pydantic.
    from partenza import manifest as mf

    folder = Path(folder)
    shown_dir = str(folder)
    problems: list[Problem] = []
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise PlanError([Problem(shown_dir, None, f"the plan folder {what}")])
    files, settings_path = manifest_files(folder)
    if not files:
        raise PlanError(
            [
                Problem(
                    shown_dir, None, "no module manifests (*.toml) in the plan folder"
                )
            ]
        )

    # Read the settings and every manifest.
    settings = None
    if settings_path:
        settings, found = mf.load_settings(settings_path, _shown(folder, settings_path))
        problems += found
    manifests: dict[str, tuple[mf.Manifest, str]] = {}
    invalid: dict[str, str] = {}
    unread: list[str] = []
    for path in files:
        shown = _shown(folder, path)
        data, found = mf.read_toml(path, shown)
        manifest = None
        if data is not None:
            manifest, found = mf.manifest_from(data, path, shown)
        problems += found
        if manifest is None:
            # What it was meant to be, so that its dependents are told.
            for claimed in (path.stem, *mf.claimed_names(data or {})):
                invalid.setdefault(claimed, shown)
            if data is None:
                unread.append(shown)
            continue
        assert manifest.name is not None
        if manifest.name in manifests:
            # The file that took a name not its own is the one to mend.
            other = manifests[manifest.name][1]
            if path.stem == manifest.name and Path(other).stem != manifest.name:
                manifests[manifest.name] = (manifest, shown)
                shown, other = other, shown
            problems.append(
                Problem(
                    shown,
                    "name",
                    f"duplicate module name {manifest.name!r}, also in {other}",
                )
            )
            continue
        manifests[manifest.name] = (manifest, shown)

    # Expand placeholders, make paths absolute, check programs and users.
    base = folder.resolve()
    modules: dict[str, ModuleSpec] = {}
    for name, (manifest, shown) in manifests.items():
        spec, found = _compile_module(manifest, shown, base)
        problems += found
        modules[name] = spec

    plan_name = (settings.name if settings and settings.name else None) or _dir_name(
        base
    )
    compiler = _Compiler(
        modules, settings.prefer if settings else {}, settings_path, invalid, unread
    )
    compiler.run()
    problems += compiler.problems
    fallback = None
    if settings and settings.fallback:
        folder_of_fallback = (base / settings.fallback).resolve()
        shown_settings = _shown(folder, settings_path) if settings_path else "plan.toml"
        if folder_of_fallback == base:
            problems.append(
                Problem(shown_settings, "fallback", "a plan cannot be its own fallback")
            )
        elif not folder_of_fallback.is_dir():
            problems.append(
                Problem(
                    shown_settings, "fallback", f"no such folder: {folder_of_fallback}"
                )
            )
        else:
            fallback = str(folder_of_fallback)
    if fallback is None:
        for spec in modules.values():
            if spec.on_failure == "fallback":
                problems.append(
                    Problem(
                        spec.file,
                        "on_failure",
                        "fallback needs a fallback plan: set fallback in plan.toml",
                    )
                )
    if settings and settings.main and settings.main not in modules:
        shown_settings = _shown(folder, settings_path) if settings_path else "plan.toml"
        problems.append(
            Problem(
                shown_settings,
                "main",
                f"no module named {settings.main!r}"
                + suggestion(settings.main, modules),
            )
        )
    if problems:
        raise PlanError(problems, modules)
    logs = settings.logs if settings else mf.LogSettings()
    console = settings.console if settings else mf.ConsoleSettings()
    rescue = settings.rescue if settings else mf.RescueSettings()
    return Plan(
        name=plan_name,
        dir=str(base),
        digest=plan_digest(folder),
        modules=modules,
        providers=compiler.providers,
        choices=compiler.choices,
        edges=compiler.edges,
        waves=compiler.waves,
        standby=compiler.standby,
        notes=compiler.notes,
        description=settings.description if settings else "",
        logs=LogSpec(
            ring_lines=logs.ring_lines,
            max_line=logs.max_line,
            file_size=logs.file_size,
            file_keep=logs.file_keep,
        ),
        console=ConsoleSpec(mode=console.mode, tty=console.tty),
        fallback=fallback,
        main=settings.main if settings else None,
        rescue=RescueSpec(shell=rescue.shell, empty_password=rescue.empty_password),
    )


def _shown(folder: Path, path: Path) -> str:
    return str(folder / path.name)


def _dir_name(path: Path) -> str:
    name = path.name.lower()
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")
    return cleaned or "plan"


PLACEHOLDERS = ("python", "plan_dir")


def _expand(text: str, base: Path) -> str:
    return text.replace("${python}", sys.executable).replace("${plan_dir}", str(base))


def _compile_module(
    manifest: Any, shown: str, base: Path
) -> tuple[ModuleSpec, list[Problem]]:
    problems: list[Problem] = []
    env = {key: _expand(value, base) for key, value in manifest.env.items()}
    workdir = base
    if manifest.workdir:
        workdir = (base / _expand(manifest.workdir, base)).resolve()
        if not workdir.is_dir():
            problems.append(Problem(shown, "workdir", f"no such folder: {workdir}"))

    def command(words: Any, field_name: str) -> tuple[str, ...]:
        """A command with placeholders expanded and its program checked."""
        unknown = [
            name
            for word in words
            for name in re.findall(r"\$\{([a-z_]+)\}", word)
            if name not in PLACEHOLDERS
        ]
        for name in unknown:
            problems.append(
                Problem(
                    shown,
                    field_name,
                    f"unknown placeholder ${{{name}}}{suggestion(name, PLACEHOLDERS)}; "
                    "known: ${python}, ${plan_dir}",
                )
            )
        expanded = tuple(_expand(arg, base) for arg in words)
        if unknown:
            return expanded
        problem = _check_program(expanded[0], env, workdir)
        if problem:
            problems.append(Problem(shown, field_name, problem))
        return expanded

    argv = command(manifest.exec, "exec")

    ready = manifest.ready
    ready_spec = ReadySpec(
        kind=ready.kind, timeout=ready.timeout, interval=ready.interval
    )
    if ready.kind == "tcp":
        ready_spec = replace(ready_spec, host=ready.host, port=ready.port)
    elif ready.kind == "exec":
        ready_spec = replace(
            ready_spec, command=command(ready.command, "ready.command")
        )
    elif ready.kind == "file":
        path = Path(_expand(ready.path, base))
        where = path if path.is_absolute() else workdir / path
        ready_spec = replace(ready_spec, path=str(where))
    elif ready.kind == "log":
        ready_spec = replace(ready_spec, pattern=ready.pattern, stream=ready.stream)

    health = None
    if manifest.health is not None:
        probe = manifest.health
        health = HealthSpec(
            kind=probe.kind,
            interval=probe.interval,
            timeout=probe.timeout,
            threshold=probe.threshold,
            restart_after=probe.restart_after,
            start_period=probe.start_period,
        )
        if probe.kind == "exec":
            health = replace(health, command=command(probe.command, "health.command"))
        elif probe.kind == "tcp":
            health = replace(health, host=probe.host, port=probe.port)
        else:
            health = replace(health, url=probe.url, status=probe.status)
    check = command(manifest.check, "check") if manifest.check is not None else ()
    heartbeat = None
    if manifest.heartbeat is not None:
        heartbeat = HeartbeatSpec(
            interval=manifest.heartbeat.interval, via=manifest.heartbeat.via
        )

    spec = ModuleSpec(
        name=manifest.name,
        file=shown,
        argv=argv,
        workdir=str(workdir),
        description=manifest.description,
        api_version=manifest.api_version,
        compatibility=manifest.compatibility,
        env=env,
        user=manifest.user,
        group=manifest.group,
        provides=tuple(manifest.provides),
        requires=tuple(manifest.requires),
        wants=tuple(manifest.wants),
        after=tuple(manifest.after),
        sidecars=tuple(manifest.sidecars),
        sidecar=manifest.sidecar,
        binding=manifest.binding,
        critical=manifest.critical,
        priority=manifest.priority,
        ready=ready_spec,
        restart=RestartSpec(
            policy=manifest.restart.policy,
            delay=manifest.restart.delay,
            max_delay=manifest.restart.max_delay,
            limit=manifest.restart.limit,
            window=manifest.restart.window,
        ),
        stop=StopSpec(signal=manifest.stop.signal, timeout=manifest.stop.timeout),
        on_failure=manifest.failure_strategy,
        heartbeat=heartbeat,
        health=health,
        requires_healthy=tuple(manifest.requires_healthy),
        check=check,
        check_timeout=manifest.check_timeout,
        network=manifest.network,
        root=manifest.root,
    )
    return spec, problems


def unmet_requirements(spec: ModuleSpec, *, euid: int, netns: str | None) -> list[str]:
    """Why this orchestrator cannot run `spec` as it asks; empty when it can.

    Args:
        euid: The orchestrator's effective uid.
        netns: Why network namespaces cannot be made here, or None if they can.
    """
    reasons: list[str] = []
    if spec.root and euid != 0:
        reasons.append(f"needs root; the orchestrator runs as uid {euid}")
    if spec.user is not None:
        try:
            entry = pwd.getpwnam(spec.user)
        except KeyError:
            reasons.append(f"runs as user {spec.user!r}, which does not exist")
        else:
            if euid != 0 and entry.pw_uid != euid:
                reasons.append(
                    f"runs as user {spec.user!r}, which needs an orchestrator run "
                    "as root"
                )
    if spec.group is not None:
        try:
            grp.getgrnam(spec.group)
        except KeyError:
            reasons.append(f"runs as group {spec.group!r}, which does not exist")
        else:
            if euid != 0:
                reasons.append(
                    f"runs as group {spec.group!r}, which needs an orchestrator run "
                    "as root"
                )
    if spec.network != "host" and netns is not None:
        reasons.append(
            f"needs a network namespace of its own ({spec.network}): {netns}"
        )
    return reasons


def _check_program(program: str, env: dict[str, str], workdir: Path) -> str | None:
    """Why `program` cannot be executed, or None when it can."""
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else workdir / program
        if not path.exists():
            return f"no such program: {path}"
        if path.is_dir() or not os.access(path, os.X_OK):
            return f"not an executable file: {path}"
        return None
    search = env.get("PATH", os.environ.get("PATH", os.defpath))
    if which(program, search) is None:
        return f"program {program!r} not found in PATH ({search})"
    return None


class _Compiler:
    """The graph work of `compile_plan`, on modules that are already valid."""

    def __init__(
        self,
        modules: dict[str, ModuleSpec],
        prefer: dict[str, str],
        settings: Path | None,
        invalid: dict[str, str] | None = None,
        unread: list[str] | None = None,
    ) -> None:
        self.modules = modules
        self.prefer = prefer
        # Manifests that did not load, by the names they claim (their file
        # stem, their name and capabilities); those not even read as TOML.
        self.invalid = invalid or {}
        self.unread = unread or []
        self.settings_file = str(settings) if settings else "plan.toml"
        self.problems: list[Problem] = []
        self.notes: list[Problem] = []
        self.providers: dict[str, list[str]] = {}
        self.choices: dict[str, str] = {}
        self.edges: list[Edge] = []
        self.waves: list[list[str]] = []
        self.standby: list[str] = []

    def run(self) -> None:
        self.choose_providers()
        self.resolve_edges()
        self.find_cycles()
        if not self.problems:
            self.order()

    def choose_providers(self) -> None:
        """Rank each capability's providers: plan preference, priority, name."""
        offered: dict[str, list[str]] = {}
        for spec in self.modules.values():
            for capability in spec.provides:
                if capability in self.modules and capability != spec.name:
                    owner = self.modules[capability].file
                    self.problems.append(
                        Problem(
                            spec.file,
                            "provides",
                            f"{capability!r} is the name of a module ({owner}); "
                            "a capability must not share a module's name",
                        )
                    )
                    continue
                offered.setdefault(capability, []).append(spec.name)
        for capability, names in sorted(offered.items()):
            ranked = sorted(names, key=lambda n: (-self.modules[n].priority, n))
            preferred = self.prefer.get(capability)
            if preferred is not None and preferred in names:
                ranked.remove(preferred)
                ranked.insert(0, preferred)
                reason = f"preferred in {SETTINGS_FILE}"
            elif len(ranked) == 1:
                reason = "only provider"
            else:
                first, second = self.modules[ranked[0]], self.modules[ranked[1]]
                if first.priority > second.priority:
                    reason = (
                        f"priority {first.priority} over {second.name} "
                        f"({second.priority})"
                    )
                else:
                    reason = (
                        f"priority {first.priority} tied with {second.name}; "
                        "first by name"
                    )
            self.providers[capability] = ranked
            self.choices[capability] = reason
        for capability, preferred in self.prefer.items():
            if capability not in offered:
                self.problems.append(
                    Problem(
                        self.settings_file,
                        f"prefer.{capability}",
                        f"no module provides {capability!r}"
                        + suggestion(capability, offered),
                    )
                )
            elif preferred not in offered[capability]:
                self.problems.append(
                    Problem(
                        self.settings_file,
                        f"prefer.{capability}",
                        f"{preferred!r} does not provide {capability!r}; its providers "
                        f"are {', '.join(offered[capability])}",
                    )
                )

    def resolve(self, name: str) -> str | None:
        if name in self.modules:
            return name
        chosen = self.providers.get(name)
        return chosen[0] if chosen else None

    def _absent(self, spec: ModuleSpec, name: str) -> str:
        """Why a requirement resolves to nothing, with the likeliest fix."""
        if name in self.invalid:
            return (
                f"{spec.name} requires {name!r}, whose manifest {self.invalid[name]} "
                "has problems of its own"
            )
        known = list(self.modules) + list(self.providers)
        why = (
            f"{spec.name} requires {name!r}, which no module in the plan "
            f"provides{suggestion(name, known)}"
        )
        if self.unread:
            files = ", ".join(self.unread)
            why += f"; {files} could not be read, and may be the one"
        return why

    def resolve_edges(self) -> None:
        bound: dict[str, str] = {}
        for spec in self.modules.values():
            healthy_only = [n for n in spec.requires_healthy if n not in spec.requires]
            for kind, names in (
                ("requires", (*spec.requires, *healthy_only)),
                ("wants", spec.wants),
                ("after", spec.after),
            ):
                for name in names:
                    target = self.resolve(name)
                    healthy = kind == "requires" and name in spec.requires_healthy
                    if target is None and kind == "requires":
                        field_name = "requires_healthy" if healthy else "requires"
                        self.problems.append(
                            Problem(spec.file, field_name, self._absent(spec, name))
                        )
                        continue
                    if target is None:
                        self.notes.append(
                            Problem(
                                spec.file,
                                kind,
                                f"{name!r} is not in the plan; {spec.name} starts "
                                "without it",
                            )
                        )
                    self.edges.append(
                        Edge(spec.name, target, kind, name, spec.file, healthy)
                    )
            for name in spec.sidecars:
                sidecar = self.modules.get(name)
                if sidecar is None and name in self.invalid:
                    self.problems.append(
                        Problem(
                            spec.file,
                            "sidecars",
                            f"sidecar {name!r} is not loaded: {self.invalid[name]} "
                            "has problems of its own",
                        )
                    )
                    continue
                if sidecar is None:
                    self.problems.append(
                        Problem(
                            spec.file,
                            "sidecars",
                            f"no sidecar module named {name!r}"
                            + suggestion(name, self.modules),
                        )
                    )
                    continue
                if not sidecar.sidecar:
                    self.problems.append(
                        Problem(
                            spec.file,
                            "sidecars",
                            f"{name!r} is not a sidecar (set sidecar = true in "
                            f"{sidecar.file})",
                        )
                    )
                    continue
                if name in bound:
                    self.problems.append(
                        Problem(
                            spec.file,
                            "sidecars",
                            f"sidecar {name!r} is already bound to {bound[name]}",
                        )
                    )
                    continue
                bound[name] = spec.name
                self.edges.append(Edge(spec.name, name, "sidecar", name, spec.file))
        for spec in self.modules.values():
            if spec.sidecar and spec.name not in bound:
                self.notes.append(
                    Problem(
                        spec.file,
                        "sidecar",
                        f"no module names {spec.name} as a sidecar",
                    )
                )

    def find_cycles(self) -> None:
        """Report each cycle whole, with the file and field of every edge."""
        graph: dict[str, list[Edge]] = {name: [] for name in self.modules}
        for edge in self.edges:
            if edge.dst is not None:
                graph[edge.src].append(edge)
        for component in _strongly_connected(graph):
            members = set(component)
            if len(component) == 1:
                only = component[0]
                if not any(e.dst == only for e in graph[only]):
                    continue
            cycle = _cycle_in(min(members), graph, members)
            path = " -> ".join([cycle[0].src] + [f"{e.dst} ({e.why()})" for e in cycle])
            first = cycle[0]
            field_name = "sidecars" if first.kind == "sidecar" else first.kind
            self.problems.append(
                Problem(first.file, field_name, f"dependency cycle: {path}")
            )

    def order(self) -> None:
        """Pick what starts at boot and sort it into waves."""
        chosen = {providers[0] for providers in self.providers.values()}
        offered_only = {
            name
            for name, spec in self.modules.items()
            if spec.provides and name not in chosen and not spec.sidecar
        }
        # Start with every module that is no unchosen provider and no sidecar,
        # then pull in what they depend on and their sidecars.
        active = {
            name
            for name, spec in self.modules.items()
            if name not in offered_only and not spec.sidecar
        }
        queue = list(active)
        while queue:
            name = queue.pop()
            for edge in self.edges:
                pulls = edge.src == name and edge.dst and edge.kind != "after"
                if pulls and edge.dst not in active:
                    assert edge.dst is not None
                    active.add(edge.dst)
                    queue.append(edge.dst)
        self.standby = sorted(set(self.modules) - active)
        for name in self.standby:
            spec = self.modules[name]
            if spec.provides:
                self.notes.append(
                    Problem(
                        spec.file,
                        "provides",
                        f"{name} is standby: another provider was chosen for "
                        + ", ".join(c for c in spec.provides if c in self.providers),
                    )
                )
        depends: dict[str, set[str]] = {name: set() for name in active}
        for edge in self.edges:
            if edge.src in active and edge.dst in active:
                depends[edge.src].add(edge.dst)
        done: set[str] = set()
        while len(done) < len(active):
            wave = sorted(n for n in active - done if depends[n] <= done)
            self.waves.append(wave)
            done.update(wave)


def _strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[Edge]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for edge in edges:
                nxt = edge.dst
                assert nxt is not None
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return sorted(result)


def _cycle_in(
    start: str, graph: dict[str, list[Edge]], members: set[str]
) -> list[Edge]:
    """A shortest cycle through `start` inside one strongly connected component."""
    parents: dict[str, Edge] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for edge in sorted(graph[node], key=lambda e: (e.dst or "", e.kind)):
                nxt = edge.dst
                assert nxt is not None
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [edge]
                    while path[0].src != start:
                        path.insert(0, parents[path[0].src])
                    return path
                if nxt not in seen:
                    seen.add(nxt)
                    parents[nxt] = edge
                    following.append(nxt)
        frontier = following
    raise AssertionError("a strongly connected component has a cycle")


def load_plan_json(text: str) -> Plan:
    """A plan from its JSON text (the cache's format)."""
    return Plan.from_json(json.loads(text))
