"""The system as `partenza top` knows it: a snapshot, kept current by events.

Plain Python, no Textual: the app feeds it the `subscribe` stream and asks it
for what to draw (rows, the dependency tree, the chain of reasons, the boot
timeline). It never asks the orchestrator for the whole state again; a gap in
the sequence numbers raises `SequenceGap`, and the caller subscribes afresh.

What each event changes:

| event        | changes                                                     |
| ------------ | ----------------------------------------------------------- |
| `state`      | the module's state, reason, since, pid, restarts; start and |
|              | ready times; last exit; the module blocking it (from the    |
|              | reason); failure fields of a `failed` transition            |
| `system`     | the system's state and reason                               |
| `boot`       | how long the boot took                                      |
| `bluescreen` | the module in rescue and its failure record                 |
| `failover`   | the providers of a capability, and what edges resolve to    |
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from partenza.units import format_duration

STATES = (
    "inactive",
    "initializing",
    "ready",
    "degraded",
    "hung",
    "restarting",
    "stopping",
    "stopped",
    "failed",
    "blocked",
)
SEVERITY = {
    "failed": 0,
    "blocked": 1,
    "hung": 2,
    "degraded": 3,
    "restarting": 4,
    "stopping": 5,
    "initializing": 6,
    "inactive": 7,
    "stopped": 8,
    "ready": 9,
}
"""Sort order for the state column: what needs a look first."""
TROUBLE = frozenset({"failed", "blocked", "hung", "degraded", "restarting"})
"""States the `trouble` filter keeps."""
STATE_FILTERS = ("all", "trouble", *STATES)
"""The state filter cycles through these."""
COLUMNS = (
    "name",
    "state",
    "health",
    "pid",
    "uptime",
    "restarts",
    "cpu",
    "rss",
    "exit",
)
_BLOCKER = re.compile(r"^requires (\S+), which (?:failed|is blocked|is stopped)")
_EXIT = re.compile(r"\b(exited -?\d+|killed by (?:SIG[A-Z0-9]+|signal \d+))")


class Resync(Exception):
    """The system changed too much for events to say: take a fresh snapshot."""


class SequenceGap(Exception):
    """An event arrived out of order: some were missed."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected event {expected}, got {got}")
        self.expected = expected
        self.got = got


@dataclass
class Module:
    """One module, as the orchestrator last described it."""

    name: str
    state: str = "inactive"
    reason: str = ""
    since: float = 0.0
    pid: int | None = None
    target: str = "up"
    standby: bool = False
    restarts: int = 0
    last_exit: str | None = None
    started_at: float | None = None
    ready_at: float | None = None
    description: str = ""
    file: str = ""
    critical: bool = False
    sidecar: bool = False
    provides: list[str] = field(default_factory=list)
    ready_check: str = ""
    on_failure: str = ""
    deps: list[dict[str, Any]] = field(default_factory=list)
    blocked_by: str | None = None
    failure: dict[str, Any] | None = None
    first_started: float | None = None
    """When its process first started in this boot, for the timeline."""
    first_ready: float | None = None
    """When it first became ready in this boot."""
    probe: str | None = None
    """What its health probe says (`unknown`, `passing`, `failing`), or None
    when it has no probe."""
    cpu: float | None = None
    """CPU use in percent of one core, sampled on this machine."""
    rss: int | None = None
    """Resident memory in bytes, sampled on this machine."""

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Module:
        names = cls.__dataclass_fields__
        module = cls(**{k: v for k, v in record.items() if k in names})
        module.provides = list(module.provides or [])
        module.deps = [dict(dep) for dep in module.deps or []]
        # The boot timeline shows the first start, not the latest restart.
        module.first_started = record.get("first_started_at") or module.started_at
        module.first_ready = record.get("first_ready_at") or module.ready_at
        module.probe = record.get("health")
        return module

    @property
    def health(self) -> str:
        """What the checks say: `ok`, `bad`, `check` (not known yet), `hung`, `-`."""
        if self.probe is not None and self.state in ("ready", "degraded"):
            return {"passing": "ok", "failing": "bad"}.get(self.probe, "check")
        return {
            "ready": "ok",
            "initializing": "check",
            "degraded": "bad",
            "hung": "hung",
        }.get(self.state, "-")

    def uptime(self, now: float) -> float | None:
        if self.pid is None or not self.started_at:
            return None
        return max(0.0, now - self.started_at)


@dataclass
class System:
    """The system as a whole."""

    state: str = "starting"
    reason: str = ""
    plan: str = ""
    plan_dir: str = ""
    boot_started: float = 0.0
    boot_took: float | None = None
    pid: int | None = None
    rescue: str | None = None


@dataclass
class Change:
    """What one event or snapshot changed."""

    modules: set[str] = field(default_factory=set)
    system: bool = False
    structure: bool = False
    """The tree must be built again: a new snapshot, or providers changed."""
    bluescreen: dict[str, Any] | None = None

    def merge(self, other: Change) -> None:
        self.modules |= other.modules
        self.system = self.system or other.system
        self.structure = self.structure or other.structure
        self.bluescreen = other.bluescreen or self.bluescreen


@dataclass
class Reason:
    """One link of a chain of reasons."""

    module: str
    state: str
    reason: str
    failure: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.module} {self.state}: {self.reason}"


TreeRole = Literal["", "sidecar", "wants", "standby", "absent"]


@dataclass
class TreeItem:
    """One node of the dependency tree."""

    kind: Literal["module", "capability", "absent"]
    name: str
    role: TreeRole = ""
    repeat: bool = False
    """The module's own subtree is shown at its first place in the tree."""
    children: list[TreeItem] = field(default_factory=list)


@dataclass
class Bar:
    """One row of the boot timeline, in seconds after the boot started."""

    module: str
    state: str
    started: float | None
    ready: float | None


class Model:
    """The whole system, kept current from one `subscribe` stream."""

    def __init__(self) -> None:
        self.seq = 0
        self.boot: str | None = None
        self.loaded = False
        self.system = System()
        self.modules: dict[str, Module] = {}
        self.providers: dict[str, list[str]] = {}

    # Feeding it.

    def load(self, snapshot: dict[str, Any]) -> Change:
        """Replace everything with a snapshot from `subscribe` or `status`."""
        self.seq = int(snapshot.get("seq", 0))
        self.boot = snapshot.get("boot")
        record = snapshot.get("system") or {}
        names = System.__dataclass_fields__
        self.system = System(**{k: v for k, v in record.items() if k in names})
        self.providers = {
            cap: list(names) for cap, names in (record.get("providers") or {}).items()
        }
        self.modules = {}
        for item in snapshot.get("modules", []):
            module = Module.from_record(item)
            self.modules[module.name] = module
        self.loaded = True
        return Change(set(self.modules), system=True, structure=True)

    def apply(self, event: dict[str, Any]) -> Change:
        """Apply one event of the stream.

        Raises:
            SequenceGap: the event is not the one after the last applied.
        """
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= self.seq:
                return Change()
            if seq != self.seq + 1:
                raise SequenceGap(self.seq + 1, seq)
            self.seq = seq
        handler = getattr(self, f"_on_{event.get('type')}", None)
        return handler(event) if handler else Change()

    def _on_health(self, event: dict[str, Any]) -> Change:
        module = self.modules.get(str(event.get("module")))
        if module is None:
            return Change()
        module.probe = event.get("health")
        return Change({module.name})

    def _on_added(self, event: dict[str, Any]) -> Change:
        record = event.get("record")
        if not isinstance(record, dict):
            raise Resync("a module was added")
        module = Module.from_record(record)
        self.modules[module.name] = module
        return Change({module.name}, system=True, structure=True)

    def _on_removed(self, event: dict[str, Any]) -> Change:
        name = str(event.get("module"))
        if self.modules.pop(name, None) is None:
            return Change()
        return Change(system=True, structure=True)

    def _on_plan(self, event: dict[str, Any]) -> Change:
        raise Resync(f"now running the plan {event.get('plan')}")

    def _on_state(self, event: dict[str, Any]) -> Change:
        name = event.get("module")
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return Change()
        new = str(event.get("new"))
        stamp = float(event.get("time") or 0.0)
        module.state = new
        module.reason = str(event.get("reason") or "")
        module.since = stamp
        module.pid = event.get("pid")
        module.restarts = int(event.get("restarts") or 0)
        if new != "inactive":
            module.standby = False
        if new == "initializing":
            module.started_at = stamp
            module.ready_at = None
            if module.first_started is None:
                module.first_started = stamp
        elif new == "ready":
            module.ready_at = stamp
            module.failure = None
            if module.first_ready is None:
                module.first_ready = stamp
        if "target" in event:
            module.target = str(event["target"])
            module.standby = bool(event.get("standby"))
        if "health" in event:
            module.probe = event["health"]
        if "last_exit" in event:
            module.last_exit = event["last_exit"]
        else:
            exit_text = event.get("exit")
            if not isinstance(exit_text, str) and new in (
                "stopped",
                "failed",
                "blocked",
            ):
                found = _EXIT.search(module.reason)
                exit_text = found.group(1) if found else None
            if isinstance(exit_text, str):
                module.last_exit = exit_text
        if "blocked_by" in event:
            module.blocked_by = event["blocked_by"]
        else:
            found = _BLOCKER.match(module.reason)
            module.blocked_by = found.group(1) if found else None
        if isinstance(event.get("failure"), dict):
            module.failure = dict(event["failure"])
        elif new == "failed":
            module.failure = {
                "stage": event.get("stage"),
                "error": module.reason,
                "time": stamp,
                "restarts": module.restarts,
                "exit": module.last_exit,
                "blocks": list(event.get("blocks") or []),
            }
        return Change({module.name})

    def _on_system(self, event: dict[str, Any]) -> Change:
        self.system.state = str(event.get("new"))
        self.system.reason = str(event.get("reason") or "")
        if event.get("plan"):
            self.system.plan = str(event["plan"])
        if self.system.state != "rescue":
            self.system.rescue = None
        return Change(system=True)

    def _on_boot(self, event: dict[str, Any]) -> Change:
        self.system.boot_took = event.get("took")
        return Change(system=True)

    def _on_bluescreen(self, event: dict[str, Any]) -> Change:
        name = str(event.get("module"))
        self.system.rescue = name
        module = self.modules.get(name)
        if module is not None:
            module.failure = {
                k: v for k, v in event.items() if k not in ("seq", "type", "module")
            }
        return Change({name} if module else set(), system=True, bluescreen=event)

    def _on_failover(self, event: dict[str, Any]) -> Change:
        capability = str(event.get("capability"))
        failed = str(event.get("failed"))
        provider = str(event.get("provider"))
        names = self.providers.setdefault(capability, [])
        rest = [n for n in names if n not in (failed, provider)]
        self.providers[capability] = [provider, *rest, failed]
        for module in self.modules.values():
            for dep in module.deps:
                if dep.get("via") == capability and dep.get("kind") != "sidecar":
                    dep["module"] = provider
        if provider in self.modules:
            self.modules[provider].standby = False
        return Change({failed, provider}, structure=True)

    def sampled(self, usage: dict[str, tuple[float, int]]) -> set[str]:
        """Take CPU and memory figures by module name; the modules that changed."""
        changed = set()
        for name, module in self.modules.items():
            cpu, rss = usage.get(name, (None, None))
            if (cpu, rss) != (module.cpu, module.rss):
                module.cpu, module.rss = cpu, rss
                changed.add(name)
        return changed

    # Asking it.

    def counts(self) -> Counter[str]:
        return Counter(module.state for module in self.modules.values())

    def pids(self) -> dict[str, int]:
        return {m.name: m.pid for m in self.modules.values() if m.pid is not None}

    def rows(
        self,
        *,
        name_filter: str = "",
        state_filter: str = "all",
        sort: str = "name",
        reverse: bool = False,
        now: float = 0.0,
    ) -> list[str]:
        """Module names as the table lists them."""
        chosen = [
            module
            for module in self.modules.values()
            if _filtered_in(module, name_filter, state_filter)
        ]
        chosen.sort(key=lambda m: m.name)
        chosen.sort(key=lambda m: _sort_key(m, sort, now), reverse=reverse)
        return [module.name for module in chosen]

    def chain(self, name: str) -> list[Reason]:
        """The reasons from a module down to the root cause.

        A module blocked by another leads to it; one waiting or failing
        because of a hard dependency that is not up leads to that one.
        """
        chain: list[Reason] = []
        seen: set[str] = set()
        current = self.modules.get(name)
        while current is not None and current.name not in seen:
            seen.add(current.name)
            chain.append(
                Reason(current.name, current.state, current.reason, current.failure)
            )
            current = self._cause(current)
        return chain

    def _cause(self, module: Module) -> Module | None:
        if module.blocked_by:
            return self.modules.get(module.blocked_by)
        if module.state in ("ready", "stopped", "failed"):
            return None
        for dep in module.deps:
            if dep.get("kind") not in ("requires", "sidecar"):
                continue
            target = self.modules.get(dep.get("module") or "")
            if target is not None and target.state != "ready":
                return target
        return None

    def tree(self, keep: Callable[[str], bool] | None = None) -> list[TreeItem]:
        """The dependency tree: what nothing depends on at the top.

        With `keep`, only the modules it keeps are shown, under what leads to
        them."""
        roots = self._tree()
        return roots if keep is None else _pruned(roots, keep)

    def _tree(self) -> list[TreeItem]:
        used: set[str] = set()
        for module in self.modules.values():
            for dep in module.deps:
                kind = dep.get("kind")
                if kind == "after":
                    continue
                via = str(dep.get("via"))
                if via in self.providers and via not in self.modules:
                    used.update(self.providers[via])
                elif dep.get("module"):
                    used.add(str(dep["module"]))
        placed: set[str] = set()
        roots = [
            self._tree_module(name, "", placed)
            for name in sorted(self.modules)
            if name not in used
        ]
        for name in sorted(self.modules):
            if name not in placed:
                roots.append(self._tree_module(name, "", placed))
        return roots

    def _tree_module(self, name: str, role: TreeRole, placed: set[str]) -> TreeItem:
        item = TreeItem("module", name, role)
        if name in placed:
            item.repeat = True
            return item
        placed.add(name)
        module = self.modules[name]
        deps = sorted(module.deps, key=lambda d: d.get("kind") != "sidecar")
        for dep in deps:
            kind = dep.get("kind")
            if kind == "after":
                continue
            via = str(dep.get("via"))
            soft: TreeRole = "wants" if kind == "wants" else ""
            if kind == "sidecar":
                if via in self.modules:
                    item.children.append(self._tree_module(via, "sidecar", placed))
            elif via in self.providers and via not in self.modules:
                capability = TreeItem("capability", via, soft)
                for index, provider in enumerate(self.providers[via]):
                    if provider in self.modules:
                        capability.children.append(
                            self._tree_module(
                                provider, "" if index == 0 else "standby", placed
                            )
                        )
                item.children.append(capability)
            elif dep.get("module") in self.modules:
                item.children.append(
                    self._tree_module(str(dep["module"]), soft, placed)
                )
            else:
                item.children.append(TreeItem("absent", via, "absent"))
        return item

    def timeline(self) -> list[Bar]:
        """When each module started and became ready, after the boot started."""
        origin = self.system.boot_started
        bars = []
        for module in self.modules.values():
            started = module.first_started
            ready = module.first_ready
            bars.append(
                Bar(
                    module.name,
                    module.state,
                    None if started is None else max(0.0, started - origin),
                    None if ready is None else max(0.0, ready - origin),
                )
            )
        bars.sort(key=lambda b: (b.started is None, b.started or 0.0, b.module))
        return bars

    def kept_by(self, name_filter: str, state_filter: str) -> Callable[[str], bool]:
        """Whether a module passes the filters, as the table has them."""
        return lambda name: (
            name in self.modules
            and _filtered_in(self.modules[name], name_filter, state_filter)
        )


def _filtered_in(module: Module, name_filter: str, state_filter: str) -> bool:
    return name_filter.lower() in module.name.lower() and _state_matches(
        module, state_filter
    )


def _pruned(items: list[TreeItem], keep: Callable[[str], bool]) -> list[TreeItem]:
    kept = []
    for item in items:
        children = _pruned(item.children, keep)
        if children or (item.kind == "module" and keep(item.name)):
            kept.append(replace(item, children=children))
    return kept


def _state_matches(module: Module, state_filter: str) -> bool:
    if state_filter == "all":
        return True
    if state_filter == "trouble":
        return module.state in TROUBLE
    return module.state == state_filter


def _sort_key(module: Module, column: str, now: float) -> Any:
    if column == "state":
        return SEVERITY.get(module.state, -1)
    if column == "health":
        return module.health
    if column == "pid":
        return module.pid or 0
    if column == "uptime":
        return module.uptime(now) or -1.0
    if column == "restarts":
        return module.restarts
    if column == "cpu":
        return module.cpu if module.cpu is not None else -1.0
    if column == "rss":
        return module.rss or 0
    if column == "exit":
        return module.last_exit or ""
    return module.name


def short_exit(text: str | None) -> str:
    """`exited 1` as `exit 1`, `killed by SIGKILL` as `SIGKILL`."""
    if not text:
        return "-"
    if text.startswith("exited "):
        return "exit " + text[7:]
    if text.startswith("killed by "):
        return text[10:]
    return text


def size(count: int | None) -> str:
    """Bytes as `812K`, `12.5M`, `1.2G`."""
    if count is None:
        return "-"
    if count < 1024:
        return f"{count}B"
    if count < 1024**2:
        return f"{count / 1024:.0f}K"
    if count < 1024**3:
        return f"{count / 1024**2:.1f}M"
    return f"{count / 1024**3:.1f}G"


def uptime_text(module: Module, now: float) -> str:
    seconds = module.uptime(now)
    return "-" if seconds is None else format_duration(seconds)
