"""The orchestrator: module states, dependencies, restarts and recovery.

Each module is a `Unit` with a state and a target (`up` or `down`). Whenever
something about a unit changes, it and its neighbours in the dependency graph
are marked dirty and stepped once more from the event loop: a step compares
the state with the target and the dependencies, and acts.

| state        | meaning                            | leaves for                    |
| ------------ | ---------------------------------- | ----------------------------- |
| inactive     | not started: standby, or waiting   | initializing (deps up);       |
|              | for its dependencies               | blocked (a hard dep failed)   |
| initializing | process started, readiness check   | ready; restarting or failed   |
|              | running                            | (ended, check timed out,      |
|              |                                    | cannot exec); stopping        |
| ready        | running, readiness check passed    | restarting, stopped or failed |
|              |                                    | (it ended); stopping (asked,  |
|              |                                    | or a hard dependency failed)  |
| restarting   | ended; waiting out its backoff     | initializing (delay over);    |
|              |                                    | stopped                       |
| stopping     | stop signal sent to its process    | stopped; blocked (a hard dep  |
|              | group; SIGKILL after stop.timeout  | failed); initializing (a      |
|              |                                    | restart was asked)            |
| stopped      | stopped on request, or finished    | initializing (start asked)    |
|              | with exit 0                        |                               |
| failed       | ended for good: start limit spent, | initializing (start asked)    |
|              | or ended badly under `never`;      |                               |
|              | `on_failure` applied               |                               |
| blocked      | a hard dependency failed or is     | initializing (the dependency  |
|              | blocked                            | is back)                      |

A hard dependency (`requires`, a sidecar) is met when it is ready. A soft one
(`wants`) or an ordering one (`after`) only has to have settled: ready, failed,
blocked, stopped or not coming. Stopping runs the other way: a unit that goes
down waits until every dependent that also goes down has stopped.

Every transition is logged as `NAME OLD -> NEW (reason)` and published on the
event bus with the same fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import secrets
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from partenza.contract import (
    ContractServer,
    NotifySocket,
    Session,
    api_fits,
    api_version,
    notify_folder,
    notify_path,
    shown,
)
from partenza.events import EventBus
from partenza.fallback import CAPABILITY, LOGGER_ROLE, FallbackLogger, LogRouter
from partenza.health import ReadyCheck, probe
from partenza.logs import ModuleLog, PipeReader
from partenza.pid1 import exit_code
from partenza.plan import Edge, ModuleSpec, Plan, unmet_requirements
from partenza.process import (
    Child,
    ExitStatus,
    ProcessManager,
    carries_token,
    ended,
    is_alive,
    process_group,
    process_start,
    process_tree,
    processes_carrying,
)
from partenza.units import format_duration, plural, visible

log = logging.getLogger(__name__)

INACTIVE = "inactive"
INITIALIZING = "initializing"
READY = "ready"
DEGRADED = "degraded"
HUNG = "hung"
RESTARTING = "restarting"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"
BLOCKED = "blocked"
STATES = (
    INACTIVE,
    INITIALIZING,
    READY,
    DEGRADED,
    HUNG,
    RESTARTING,
    STOPPING,
    STOPPED,
    FAILED,
    BLOCKED,
)

UP = frozenset({READY, DEGRADED})
"""States that meet a hard dependency."""
SETTLED = frozenset({READY, DEGRADED, FAILED, BLOCKED, STOPPED})
"""States a boot waits for: nothing more will happen without a cause."""
LIVE = frozenset({INITIALIZING, READY, DEGRADED, HUNG, STOPPING})
"""States in which the unit has a process."""
TROUBLE = frozenset({DEGRADED, HUNG, FAILED, BLOCKED})
"""States that make the system degraded."""

EXIT_OK = 0
EXIT_MODULE_FAILED = 1
"""`partenza boot` ends with this when a module's `on_failure = shutdown` fired."""

SWEEP_POLL = 0.05
STABLE_RUN = 1.0
"""Seconds a process must have run for its end to restart it without delay."""
DRAIN_BATCH = 32
"""Units stepped before the loop gets a turn."""
FINAL_SWEEP_GRACE = 2.0
STATUS_EVERY = 0.1
"""Seconds between two `status` events of one module; the latest text wins."""


class Unit:
    """One module of the plan at run time."""

    __slots__ = (
        "blocked_after_stop",
        "blocked_by",
        "check",
        "child",
        "completed",
        "down_reason",
        "failure",
        "first_ready_at",
        "first_started_at",
        "generation",
        "health",
        "health_detail",
        "health_task",
        "heartbeat_timer",
        "hung",
        "kill_timer",
        "killed",
        "last_exit",
        "last_heartbeat",
        "last_status",
        "log",
        "main_pid",
        "main_started",
        "metrics",
        "name",
        "next_spec",
        "notify",
        "owner",
        "path",
        "ready_at",
        "reason",
        "removing",
        "restart_after_stop",
        "restarts",
        "session",
        "since",
        "spec",
        "standby",
        "started_at",
        "starts",
        "state",
        "status_text",
        "stopping",
        "target",
        "task",
        "timer",
        "token",
        "unhealthy",
        "unmet",
        "verified",
    )

    def __init__(self, spec: ModuleSpec, log: ModuleLog, *, standby: bool) -> None:
        self.spec = spec
        self.name = spec.name
        self.path = spec.file
        self.log = log
        self.state = INACTIVE
        self.reason = "standby" if standby else "waiting to start"
        self.since = time.time()
        self.target = "down" if standby else "up"
        self.standby = standby
        self.down_reason = ""
        self.child: Child | None = None
        self.token = ""
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.starts: list[float] = []
        self.restarts = 0
        self.generation = 0
        """How many times a process was started for this unit."""
        self.last_exit: str | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.first_started_at: float | None = None
        self.first_ready_at: float | None = None
        """When its first process started and became ready: the boot timeline."""
        self.completed = False
        self.stopping = False
        self.killed = False
        self.blocked_after_stop: str | None = None
        self.restart_after_stop = False
        self.blocked_by: str | None = None
        self.failure: dict[str, Any] | None = None
        self.next_spec: ModuleSpec | None = None
        """A changed manifest, applied once the running process has stopped."""
        self.removing = False
        self.check: ReadyCheck | None = None
        self.session: Session | None = None
        self.notify: NotifySocket | None = None
        self.status_text: str | None = None
        self.health = "unknown"
        """`unknown`, `passing` or `failing`: what the health probe says."""
        self.health_detail = ""
        self.health_task: asyncio.Task[None] | None = None
        self.heartbeat_timer: asyncio.TimerHandle | None = None
        self.last_heartbeat: float | None = None
        self.hung = False
        self.unhealthy = False
        self.unmet: str | None = None
        """Why this orchestrator cannot run the module as its manifest asks."""
        self.main_pid: int | None = None
        """A main process the module named with MAINPID=, when not its own."""
        self.main_started: int | None = None
        """When that main process started: with its pid, it names the process."""
        self.owner: str | None = None
        """For a sidecar: the target it is bound to."""
        self.last_status: ExitStatus | None = None
        self.verified: asyncio.Future[str] | None = None
        self.metrics: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child and self.child.running else None

    @property
    def busy(self) -> bool:
        """A process, a supervising task or a restart timer is in flight."""
        return self.child is not None or self.task is not None or self.timer is not None


def _uid(user: str) -> int | None:
    """The uid of `user`, or None when there is no such user."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


class Orchestrator:
    """Boots a plan, supervises it, and answers requests about it."""

    def __init__(
        self,
        plan: Plan,
        *,
        state_dir: Path | None,
        processes: ProcessManager | None = None,
        extra_env: dict[str, str] | None = None,
        source: str | None = None,
        runtime_dir: Path | None = None,
        fallback: Plan | None = None,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.contract: ContractServer | None = None
        self._netns_checked = False
        self._netns_problem: str | None = None
        """Why network namespaces cannot be made here, once checked."""
        self.source = source or plan.dir
        """The plan folder as it was given, which a reload compiles again."""
        self.state_dir = state_dir
        self.bus = EventBus()
        self.processes = processes or ProcessManager()
        self._dirty: dict[str, None] = {}
        self._drain_scheduled = False
        self._waiters: list[
            tuple[Unit, Callable[[Unit], bool], asyncio.Future[None]]
        ] = []
        self._base_env = {
            k: v for k, v in os.environ.items() if not k.startswith("PARTENZA_")
        }
        self._base_env.update(extra_env or {})
        self._finished = asyncio.Event()
        self.shutting_down = False
        self.rescue: str | None = None
        self.exit_code = EXIT_OK
        self.action = "exit"
        """What ends the run: `exit`, `poweroff` or `reboot`."""
        self.finishing: list[Callable[[], Awaitable[None]]] = []
        """Run once every module has stopped, before the last sweep."""
        self.console_line: Callable[[str, str], None] | None = None
        """Writes a tagged line on the console; set by whoever owns it."""
        self.fallback_plan = fallback
        """The plan to boot when a module's `on_failure = "fallback"` fires."""
        self.fallback_of: str | None = None
        """The plan this fallback plan took over from, and why."""
        self.fallback_reason: str | None = None
        self._switch_to: Plan | None = None
        self._status_at: dict[str, float] = {}
        """When each module's last `status` event was published."""
        self._status_due: dict[str, str] = {}
        """The status text each module's next `status` event will carry."""
        self.router: LogRouter | None = None
        self.system = "starting"
        self.system_reason = f"booting plan {plan.name}"
        self._load(plan)

    def _load(self, plan: Plan) -> None:
        """Make the units of `plan`, none of them started yet."""
        self.plan = plan
        self.providers = {cap: list(names) for cap, names in plan.providers.items()}
        log_dir = self.state_dir / "logs" if self.state_dir else None
        standby = set(plan.standby)
        self.units: dict[str, Unit] = {
            name: Unit(
                spec, ModuleLog(name, plan.logs, log_dir), standby=name in standby
            )
            for name, spec in plan.modules.items()
        }
        for unit in self.units.values():
            unit.unmet = self._unmet(unit.spec)
            unit.path = self._manifest_path(unit.spec)
        self._edges_from: dict[str, list[Edge]] = {name: [] for name in self.units}
        for edge in plan.edges:
            self._edges_from[edge.src].append(edge)
        self._dependents: dict[str, set[str]] = {}
        self._bind_sidecars()
        self._rebuild_dependents()
        self._counts: Counter[str] = Counter(u.state for u in self.units.values())
        self._pending_boot = {u.name for u in self.units.values() if u.target == "up"}
        self.boot_started = time.time()
        self.pid1 = os.getpid() == 1
        """Whether it does PID 1's duties (as PID 1, or told to with --pid1)."""
        self.boot_took: float | None = None
        if self.router is not None:
            self.router.fallback.close()
        self.router = None
        if CAPABILITY in plan.providers:
            self.router = LogRouter(
                FallbackLogger(
                    self.state_dir / "fallback.log" if self.state_dir else None,
                    self._console,
                    kmsg=os.getpid() == 1,
                )
            )
        for unit in self.units.values():
            self._route(unit)

    # The lifecycle of the orchestrator itself.

    async def run(self) -> int:
        """Boot the plan and supervise it until a shutdown has finished."""
        self.processes.install()
        if self.runtime_dir is not None:
            self.contract = ContractServer(self, self.runtime_dir / "contract.sock")
            await self._end_earlier_run(self.contract.path)
            await self.contract.start()
            self.finishing.append(self.contract.close)
        self.bus.publish(
            "system",
            old=None,
            new=self.system,
            reason=self.system_reason,
            plan=self.plan.name,
        )
        for unit in self.units.values():
            self._mark(unit)
        if not self._pending_boot:
            self._boot_finished()
        await self._finished.wait()
        for finish in self.finishing:
            await finish()
        await self._final_sweep()
        if self.router is not None:
            self.router.fallback.close()
        main = self.units.get(self.plan.main or "")
        if main is not None and main.last_status is not None:
            self.exit_code = exit_code(main.last_status)
        for unit in self.units.values():
            unit.log.close()
        self.processes.uninstall()
        return self.exit_code

    async def _end_earlier_run(self, contract: Path) -> None:
        """Stop the modules an earlier orchestrator on this socket left running.

        They carry this contract socket's path in their environment; an
        orchestrator that was killed could not stop them, and they would hold
        ports and files the new modules need.
        """
        left = processes_carrying(f"PARTENZA_SOCKET={contract}")
        if not left:
            return
        log.warning(
            "%s of an earlier run on %s %s still alive (pids %s); stopping them",
            plural(len(left), "process"),
            contract.parent,
            "is" if len(left) == 1 else "are",
            ", ".join(map(str, left[:10])) + (", ..." if len(left) > 10 else ""),
        )
        for pid in left:
            self.processes.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + FINAL_SWEEP_GRACE
        while any(is_alive(pid) for pid in left) and time.monotonic() < deadline:
            await asyncio.sleep(SWEEP_POLL)
        for pid in left:
            if is_alive(pid):
                self.processes.kill(pid, signal.SIGKILL)

    def shutdown(self, reason: str, code: int = EXIT_OK, action: str = "exit") -> None:
        """Stop every module, dependents before their dependencies, then end.

        Args:
            reason: Why, for the console and the events.
            code: The exit status of `partenza boot` afterwards.
            action: `exit`, `poweroff` or `reboot`: what the boot does once
                every module has stopped.
        """
        if self.shutting_down:
            return
        log.info("shutting down: %s", reason)
        self.shutting_down = True
        self.exit_code = code
        self.action = action
        self._set_system("stopping", reason)
        for unit in self.units.values():
            unit.target = "down"
            unit.down_reason = "shutting down"
            self._mark(unit)
        self._check_finished()

    def fall_back(self, reason: str) -> bool:
        """Stop this plan in order and boot the fallback plan; False if there
        is none to boot (or a switch or a shutdown is already under way)."""
        plan = self.fallback_plan
        if plan is None or self._switch_to is not None or self.shutting_down:
            return False
        log.warning("switching to the fallback plan %s: %s", plan.name, reason)
        self._switch_to = plan
        self.fallback_reason = reason
        self.bus.publish("fallback", plan=plan.name, frm=self.plan.name, reason=reason)
        self._set_system("stopping", f"switching to {plan.name}: {reason}")
        for unit in self.units.values():
            unit.target = "down"
            unit.down_reason = f"switching to the fallback plan {plan.name}"
            self._mark(unit)
        return True

    def _take_fallback(self) -> None:
        """Every module of the old plan has stopped: boot the fallback plan."""
        plan = self._switch_to
        assert plan is not None
        self._switch_to = None
        self.fallback_of = self.plan.name
        self.fallback_plan = None
        for unit in self.units.values():
            unit.log.close()
        self.rescue = None
        self.source = plan.dir
        self._load(plan)
        reason = f"booting the fallback plan {plan.name} ({self.fallback_reason})"
        self.bus.publish("plan", plan=plan.name, reason=reason, frm=self.fallback_of)
        self._set_system("starting", reason)
        for unit in self.units.values():
            self._mark(unit)
        if not self._pending_boot:
            self._boot_finished()

    async def _final_sweep(self) -> None:
        """End every descendant still alive after the modules have stopped."""
        processes = self.processes
        left = processes.leftovers()
        if not left:
            return
        log.info(
            "%s left after shutdown; sending SIGTERM", plural(len(left), "process")
        )
        for pid in left:
            processes.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + FINAL_SWEEP_GRACE
        while processes.leftovers() and time.monotonic() < deadline:
            await asyncio.sleep(SWEEP_POLL)
        left = processes.leftovers()
        for pid in left:
            processes.kill(pid, signal.SIGKILL)
        if left:
            log.warning(
                "%s killed with SIGKILL after shutdown", plural(len(left), "process")
            )
            await asyncio.sleep(SWEEP_POLL)
        self.processes.reap()

    # Requests: start, stop, restart.

    def unit(self, name: str) -> Unit:
        """The unit called `name`.

        Raises:
            KeyError: no module has that name.
        """
        return self.units[name]

    def start(self, name: str) -> Unit:
        """Bring a module up, with the hard dependencies it needs."""
        unit = self.units[name]
        for member in [unit, *self._hard_closure(unit, downward=True)]:
            if member.target == "down" or member.state == FAILED or member is unit:
                member.target = "up"
                member.standby = False
                member.starts.clear()
                member.completed = False
            if member.state == FAILED:
                member.failure = None
                self._set(member, INACTIVE, "start requested")
            if member.state == RESTARTING and member.timer is not None:
                member.timer.cancel()
                member.timer = None
            self._mark(member)
        return unit

    def stop(self, name: str) -> Unit:
        """Take a module down, and first the modules that require it."""
        unit = self.units[name]
        unit.target = "down"
        unit.down_reason = "stop requested"
        for dependent in self._hard_closure(unit, downward=False):
            if dependent.target == "up":
                dependent.target = "down"
                dependent.down_reason = f"requires {unit.name}, which was asked to stop"
                self._mark(dependent)
        if unit.state in (FAILED, BLOCKED) and not unit.busy:
            self._set(unit, STOPPED, "stopped on request")
        self._mark(unit)
        return unit

    def restart(self, name: str) -> Unit:
        """Stop a module and start it again, its start limit reset.

        What requires it, running, is restarted with it, as it may hold a
        connection to the old process; it starts again once the module is
        ready."""
        unit = self.units[name]
        for dependent in self._hard_closure(unit, downward=False):
            if dependent.child is not None and not dependent.stopping:
                dependent.restart_after_stop = True
                self._stop(dependent, f"requires {name}, which is restarting")
        unit.restarts += 1
        if unit.child is not None and not unit.stopping:
            unit.target = "up"
            unit.restart_after_stop = True
            self._stop(unit, "restart requested")
            return unit
        if unit.stopping:
            unit.restart_after_stop = True
            return unit
        return self.start(name)

    def reload(self, plan: Plan) -> dict[str, list[str]]:
        """Apply a newly compiled plan: add, remove and restart what changed.

        Unchanged modules are left running. A changed module that is running is
        stopped and started on its new manifest; one that had failed is given a
        fresh start. A module that left the plan is stopped and forgotten.
        """
        changes = diff_plans(self.plan, plan)
        self.plan = plan
        self.providers = {cap: list(names) for cap, names in plan.providers.items()}
        self._edges_from = {name: [] for name in self.units}
        for edge in plan.edges:
            self._edges_from.setdefault(edge.src, []).append(edge)
        for name in changes["removed"]:
            unit = self.units[name]
            unit.removing = True
            unit.target = "down"
            unit.down_reason = "removed from the plan"
        standby = set(plan.standby)
        log_dir = self.state_dir / "logs" if self.state_dir else None
        for name in changes["added"]:
            unit = Unit(
                plan.modules[name],
                ModuleLog(name, plan.logs, log_dir),
                standby=name in standby,
            )
            unit.unmet = self._unmet(unit.spec)
            unit.path = self._manifest_path(unit.spec)
            self.units[name] = unit
            self._route(unit)
            self._counts[unit.state] += 1
            self.bus.publish("added", module=name, record=self.record(unit))
        for name in changes["changed"]:
            self._respec(self.units[name], plan.modules[name])
        for name, unit in self.units.items():
            if unit.removing:
                continue
            if name in standby and not unit.standby and not unit.busy:
                unit.standby, unit.target = True, "down"
            elif name not in standby and unit.standby:
                unit.standby, unit.target = False, "up"
        self._bind_sidecars()
        self._rebuild_dependents()
        for unit in list(self.units.values()):
            self._mark(unit)
        log.info(
            "reloaded %s: %d added, %d removed, %d changed",
            plan.name,
            len(changes["added"]),
            len(changes["removed"]),
            len(changes["changed"]),
        )
        self.bus.publish("reload", plan=plan.name, **changes)
        return changes

    def _respec(self, unit: Unit, spec: ModuleSpec) -> None:
        unit.unmet = self._unmet(spec)
        unit.starts.clear()
        unit.completed = False
        if unit.child is not None:
            unit.next_spec = spec
            unit.restart_after_stop = True
            self._stop(unit, "manifest changed")
            return
        unit.spec = spec
        if unit.timer is not None:
            unit.timer.cancel()
            unit.timer = None
        if unit.state in (FAILED, RESTARTING):
            unit.failure = None
            self._set(unit, INACTIVE, "manifest changed")

    async def run_checks(self) -> dict[str, dict[str, Any]]:
        """Check every module's configuration: its `check` command, and the
        answer of a module that validates over the contract."""
        from partenza.health import run_check

        async def one(unit: Unit) -> tuple[str, dict[str, Any]]:
            spec = unit.spec
            if spec.check:
                passed, how, output = await run_check(
                    self.processes.spawn,
                    spec.check,
                    self._environment(unit),
                    spec.workdir,
                    spec.check_timeout,
                )
                return unit.name, {"ok": passed, "how": how, "output": output}
            assert unit.session is not None
            answer = await unit.session.validate(spec.check_timeout)
            problems = [str(p) for p in answer.get("problems") or []]
            ok = bool(answer.get("ok")) and not problems
            how = "the module says it is sound" if ok else "the module found problems"
            return unit.name, {"ok": ok, "how": how, "output": problems}

        chosen = [
            unit
            for unit in self.units.values()
            if unit.spec.check or (unit.session is not None and unit.session.validates)
        ]
        return dict(await asyncio.gather(*(one(unit) for unit in chosen)))

    def resume(self, by: int | None = None) -> None:
        """Leave rescue and go on with the boot, degraded if it must be.

        `by` is the pid of whoever asked (a rescue shell): the `resumed` event
        names it, so that a rescue shell on the console knows that it was
        another one that resumed the boot, and gives the console back."""
        failed, self.rescue = self.rescue, None
        if failed:
            log.info("leaving rescue (%s failed)", failed)
        for unit in self.units.values():
            self._mark(unit)
        self._update_system()
        self.bus.publish("resumed", module=failed, by=by)

    async def settled(
        self, unit: Unit, wanted: Callable[[Unit], bool], timeout: float
    ) -> bool:
        """Wait until `wanted(unit)` holds; False if `timeout` seconds pass first.

        The changes already asked for are carried out first, so a unit that a
        request is about to move is not judged by the state it is leaving.
        """
        while self._drain_scheduled or self._dirty:
            await asyncio.sleep(0)
        if wanted(unit):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (unit, wanted, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # Stepping: compare each dirty unit with its target and dependencies.

    def _mark(self, unit: Unit) -> None:
        self._dirty[unit.name] = None
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _touch(self, unit: Unit) -> None:
        """Mark a unit and every unit that depends on it or that it depends on."""
        self._mark(unit)
        for name in self._dependents.get(unit.name, ()):
            self._mark(self.units[name])
        for _, target in self._targets(unit):
            if target is not None:
                self._mark(target)

    def _drain(self) -> None:
        self._drain_scheduled = False
        steps = 0
        while self._dirty:
            steps += 1
            if steps > DRAIN_BATCH:
                # Let the loop reap, read and answer between batches: a wave
                # of a thousand spawns must not hold it for seconds.
                self._drain_scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
                return
            name = next(iter(self._dirty))
            del self._dirty[name]
            unit = self.units.get(name)
            if unit is None:
                continue
            self._step(unit)
            if unit.removing and not unit.busy:
                self._forget(unit)
        if self._switch_to is not None and not any(u.busy for u in self.units.values()):
            self._take_fallback()
        self._update_system()
        if self.shutting_down:
            self._check_finished()

    def _step(self, unit: Unit) -> None:
        if unit.owner is not None and not self.shutting_down:
            self._follow_owner(unit)
        if unit.target == "up":
            self._step_up(unit)
        else:
            self._step_down(unit)

    def _follow_owner(self, sidecar: Unit) -> None:
        """A sidecar runs while its target runs, or is about to."""
        owner = self.units.get(sidecar.owner or "")
        if owner is None:
            return
        finished = owner.state == STOPPED and owner.completed and not owner.busy
        blocked_elsewhere = owner.state == BLOCKED and owner.blocked_by != sidecar.name
        wanted = owner.target == "up" and owner.state != FAILED
        if wanted and not finished and not blocked_elsewhere:
            sidecar.target = "up"
            return
        if sidecar.target == "up":
            sidecar.target = "down"
            sidecar.down_reason = f"its target {owner.name} is {owner.state}"

    def _step_up(self, unit: Unit) -> None:
        if unit.child is not None:
            if not unit.stopping:
                verdict, reason, blocker = self._dependencies(unit)
                if verdict == "blocked":
                    unit.blocked_by = blocker
                    self._stop(unit, reason, blocked=reason)
            return
        if unit.task is not None or unit.timer is not None:
            return
        if unit.state == STOPPED and unit.completed:
            return
        if unit.state not in (INACTIVE, STOPPED, BLOCKED, RESTARTING):
            return
        if unit.unmet is not None:
            unit.blocked_by = None
            self._set(unit, BLOCKED, unit.unmet)
            return
        verdict, reason, blocker = self._dependencies(unit)
        if verdict == "blocked":
            unit.blocked_by = blocker
            self._set(unit, BLOCKED, reason)
        elif verdict == "wait":
            unit.blocked_by = None
            if unit.state in (BLOCKED, INACTIVE):
                self._set(unit, INACTIVE, reason)
        else:
            unit.blocked_by = None
            self._launch(unit)

    def _step_down(self, unit: Unit) -> None:
        if unit.timer is not None:
            unit.timer.cancel()
            unit.timer = None
            self._set(unit, STOPPED, unit.down_reason or "stopped")
            return
        if unit.child is None or unit.stopping:
            return
        holders = [
            self.units[name]
            for name in self._dependents.get(unit.name, ())
            if self.units[name].target == "down" and self.units[name].busy
        ]
        if not holders:
            self._stop(unit, unit.down_reason or "stop requested")

    def _dependencies(self, unit: Unit) -> tuple[str, str, str | None]:
        """("go" | "wait" | "blocked", the reason, the blocking module)."""
        waiting: list[str] = []
        for edge, target in self._targets(unit):
            if target is None:
                if edge.hard:
                    return "blocked", f"requires {edge.via}: no provider left", None
                continue
            if edge.hard:
                healthy = (
                    not edge.healthy
                    or target.spec.health is None
                    or target.health == "passing"
                )
                if target.state in UP and healthy:
                    continue
                if target.state == STOPPED and target.completed:
                    continue
                if target.state in UP:
                    waiting.append(f"{target.name} to be healthy")
                    continue
                if target.state == FAILED:
                    providers = self.providers.get(edge.via)
                    if providers and edge.via != target.name:
                        if all(self.units[n].state == FAILED for n in providers):
                            failed = ", ".join(sorted(providers))
                            reason = (
                                f"requires {edge.via}: no provider left "
                                f"({failed} failed)"
                            )
                        else:
                            reason = (
                                f"requires {edge.via} ({target.name}), which failed"
                            )
                        return "blocked", reason, target.name
                    return (
                        "blocked",
                        f"requires {target.name}, which failed",
                        target.name,
                    )
                if target.state == BLOCKED:
                    return (
                        "blocked",
                        f"requires {target.name}, which is blocked",
                        target.name,
                    )
                if target.target == "down" and not target.busy:
                    return (
                        "blocked",
                        f"requires {target.name}, which is stopped",
                        target.name,
                    )
                waiting.append(target.name)
            elif not self._soft_settled(target):
                waiting.append(target.name)
        if waiting:
            return "wait", "waiting for " + ", ".join(sorted(set(waiting))), None
        return "go", "", None

    def _soft_settled(self, unit: Unit) -> bool:
        if unit.target == "down":
            return not unit.busy or unit.state in UP
        return (unit.state in SETTLED and not unit.busy) or unit.state in UP

    # Starting and supervising one process.

    def _launch(self, unit: Unit) -> None:
        """Spawn the module's process and hand it to a supervising task."""
        spec = unit.spec
        unit.starts.append(time.monotonic())
        unit.generation += 1
        unit.token = secrets.token_hex(16)
        unit.stopping = unit.killed = unit.hung = unit.unhealthy = False
        unit.health, unit.health_detail = "unknown", ""
        unit.status_text = unit.main_pid = unit.last_heartbeat = unit.verified = None
        unit.main_started = None
        wants_notify = spec.ready.kind == "notify" or (
            spec.heartbeat is not None and spec.heartbeat.via == "watchdog"
        )
        spawned: list[Child] = []
        """The process of this start, once there is one."""
        if wants_notify and self.runtime_dir is not None:
            # Bound before the spawn, so that nothing the module sends is lost.
            try:
                unit.notify = self._notify_socket(unit, spawned)
            except (OSError, KeyError) as exc:
                error = f"cannot make its notify socket: {exc}"
                unit.log.note(error)
                self._ended(unit, None, "starting", error)
                return
        env = self._environment(unit)
        check = ReadyCheck(
            spec.ready,
            log=unit.log,
            spawn=self.processes.spawn,
            env=env,
            cwd=spec.workdir,
            members=lambda: process_tree([unit.child.pid]) if unit.child else [],
            module=unit.name,
        )
        check.arm()
        unit.check = check
        argv, user, group = self._command(spec)
        try:
            if spec.ready.kind in ("handshake", "notify") and self.runtime_dir is None:
                raise OSError(0, f"{spec.ready.kind} readiness needs a runtime folder")
            child = self.processes.spawn(
                argv,
                env=env,
                cwd=spec.workdir,
                user=user,
                group=group,
                token=unit.token,
            )
        except OSError as exc:
            check.close()
            unit.check = None
            if unit.notify is not None:
                unit.notify.close()
                unit.notify = None
            error = f"cannot start {spec.argv[0]}: {exc.strerror or exc}"
            unit.log.note(error)
            self._ended(unit, None, "starting", error)
            return
        unit.child = child
        spawned.append(child)
        unit.started_at = time.time()
        unit.ready_at = None
        if unit.first_started_at is None:
            unit.first_started_at = unit.started_at
        unit.log.note(f"started pid {child.pid}: {shlex.join(spec.argv)}")
        self._set(
            unit, INITIALIZING, f"pid {child.pid}, waiting for {spec.ready.describe()}"
        )
        unit.task = asyncio.get_running_loop().create_task(
            self._supervise(unit, child, check), name=f"supervise {unit.name}"
        )

    def _notify_socket(self, unit: Unit, spawned: list[Child]) -> NotifySocket:
        """A NOTIFY_SOCKET for this start of `unit`, which only root and the
        processes of `spawned[0]` may speak on.

        Raises:
            OSError: the socket or its folder cannot be made.
            KeyError: the module's user does not exist.
        """
        assert self.runtime_dir is not None
        folder = self.runtime_dir / "notify"
        me = os.geteuid()
        owner = pwd.getpwnam(unit.spec.user).pw_uid if unit.spec.user else None
        shared = (owner is not None and owner != me) or any(
            _uid(other.spec.user) not in (None, me)
            for other in self.units.values()
            if other.spec.user
        )
        notify_folder(folder, shared)

        def admits(pid: int, uid: int) -> bool:
            return bool(spawned) and self.processes.belongs(spawned[0], pid)

        def notified(fields: dict[str, str]) -> None:
            self._notified(unit, spawned[0] if spawned else None, fields)

        return NotifySocket(
            notify_path(folder, unit.name, unit.token),
            notified,
            module=unit.name,
            admits=admits,
            owner=owner,
        )

    def _environment(self, unit: Unit) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(unit.spec.env)
        env["PARTENZA_MODULE"] = unit.name
        env["PARTENZA_TOKEN"] = unit.token
        if self.contract is not None:
            env["PARTENZA_SOCKET"] = str(self.contract.path)
        if unit.notify is not None:
            env["NOTIFY_SOCKET"] = str(unit.notify.path)
        heartbeat = unit.spec.heartbeat
        if heartbeat is not None and heartbeat.via == "watchdog":
            env["WATCHDOG_USEC"] = str(int(heartbeat.interval * 1_000_000))
        return env

    def _console(self, tag: str, text: str) -> None:
        if self.console_line is not None:
            self.console_line(tag, text)

    def _route(self, unit: Unit) -> None:
        """Send the unit's output to the plan's logging module, or the fallback."""
        router = self.router
        if router is not None:
            name = unit.name
            unit.log.subscribe(lambda line: router.line(name, line))

    def _manifest_path(self, spec: ModuleSpec) -> str:
        return str(Path(self.plan.dir) / Path(spec.file).name)

    def _unmet(self, spec: ModuleSpec) -> str | None:
        if spec.network != "host" and not self._netns_checked:
            from partenza.netns import probe as probe_netns

            self._netns_problem = probe_netns()
            self._netns_checked = True
        netns = self._netns_problem
        return (
            "; ".join(unmet_requirements(spec, euid=os.geteuid(), netns=netns)) or None
        )

    def _command(self, spec: ModuleSpec) -> tuple[list[str], str | None, str | None]:
        """The argv to spawn, and the user and group for the spawn to switch to."""
        if spec.network == "host":
            return list(spec.argv), spec.user, spec.group
        wrapper = [sys.executable, "-m", "partenza.netns", spec.network]
        if spec.user:
            wrapper += ["--user", spec.user]
        if spec.group:
            wrapper += ["--group", spec.group]
        return [*wrapper, "--", *spec.argv], None, None

    async def _supervise(self, unit: Unit, child: Child, check: ReadyCheck) -> None:
        spec = unit.spec
        assert child.popen.stdout is not None and child.popen.stderr is not None
        readers = [
            PipeReader(child.popen.stdout, unit.log, "out"),
            PipeReader(child.popen.stderr, unit.log, "err"),
        ]

        # Wait for readiness, or for the process to end first.
        stage, error = "running", None
        ready = asyncio.ensure_future(
            asyncio.wait_for(check.wait(), spec.ready.timeout)
        )
        await asyncio.wait({ready, child.exited}, return_when=asyncio.FIRST_COMPLETED)
        started_only = spec.ready.kind == "started"
        if not ready.done() or (started_only and child.exited.done()):
            # It ended before it was ready; under `started` that is a plain exit.
            ready.cancel()
            if not started_only:
                stage = "starting"
        elif ready.exception() is not None:
            stage = "ready check"
            exc = ready.exception()
            if isinstance(exc, TimeoutError):
                error = (
                    f"not ready after {format_duration(spec.ready.timeout)} "
                    f"({spec.ready.describe()}: {check.last_error})"
                )
            else:
                error = f"ready check failed: {exc}"
            if not unit.stopping:
                unit.log.note(error)
                self._terminate(unit)
        elif not unit.stopping:
            # A target with a verifier sidecar is ready once it is verified.
            how, problem = await self._verification(unit, child, ready.result())
            if problem is not None:
                if child.running:
                    stage, error = "ready check", problem
                    unit.log.note(problem)
                    self._terminate(unit)
            elif not unit.stopping and child.running:
                unit.ready_at = time.time()
                if unit.first_ready_at is None:
                    unit.first_ready_at = unit.ready_at
                took = time.monotonic() - child.started
                self._set(unit, READY, how, ready_in=round(took, 4))
            elif not child.running and not unit.stopping:
                stage = "starting"
        if stage == "running" and unit.state == READY:
            self._arm_heartbeat(unit)
            if spec.health is not None:
                unit.health_task = asyncio.get_running_loop().create_task(
                    self._probe_health(unit, child), name=f"health {unit.name}"
                )
        check.close()
        unit.check = None
        # Let the check (and the environment it keeps) go while the module runs.
        last_error = check.last_error
        del check, ready

        # Supervise until the process ends, then sweep up what it left behind.
        status = await child.exited
        if unit.notify is not None:
            # A MAINPID= sent just before it ended is still queued.
            unit.notify.read()
        main = unit.main_pid
        if main and main != child.pid and not unit.stopping:
            # It handed over to the main process it named with MAINPID=.
            handed = self.processes.watch(main)
            if handed is not None:
                unit.log.note(
                    f"pid {child.pid} {status.describe()}; main pid is {main}"
                )
                status = await self._follow_main(unit, main, handed)
        if stage == "starting":
            error = f"{status.describe()} before it was ready ({last_error})"
        elif unit.hung and spec.heartbeat is not None:
            stage = "heartbeat"
            error = f"hung: no heartbeat for {format_duration(spec.heartbeat.interval)}"
        elif unit.unhealthy:
            stage, error = "health", f"unhealthy: {unit.health_detail}"
        self._disarm(unit)
        await self._sweep(unit, child)
        await asyncio.wait([reader.closed for reader in readers], timeout=0.2)
        for reader in readers:
            reader.close()
        unit.child = None
        unit.task = None
        if unit.kill_timer is not None:
            unit.kill_timer.cancel()
            unit.kill_timer = None
        unit.log.note(f"pid {child.pid} {status.describe()}")
        if unit.notify is not None:
            unit.notify.close()
            unit.notify = None
        if unit.session is not None:
            unit.session.close()
            unit.session = None
        self._ended(unit, status, stage, error)

    async def _verification(
        self, unit: Unit, child: Child, how: str
    ) -> tuple[str, str | None]:
        """Wait for a verifier sidecar's word, if the unit has one: how it became
        ready, and the problem if it was not verified."""
        verifiers = [
            sidecar.name
            for sidecar in self._sidecars(unit)
            if sidecar.session is not None and sidecar.session.role == "verifier"
        ]
        if not verifiers:
            return how, None
        # Ask now, when the target would otherwise count as ready.
        unit.verified = asyncio.get_running_loop().create_future()
        for sidecar in self._sidecars(unit):
            if sidecar.session is not None and sidecar.session.role == "verifier":
                sidecar.session.post(
                    {**self._target_message(unit), "state": "verifying"}
                )
        timeout = unit.spec.ready.timeout - (time.monotonic() - child.started)
        verified = asyncio.ensure_future(asyncio.shield(unit.verified))
        done, _ = await asyncio.wait(
            {verified, child.exited},
            timeout=max(0.05, timeout),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if verified not in done:
            verified.cancel()
            if not child.running:
                return how, None
            return how, f"not verified by {', '.join(verifiers)} in time"
        try:
            word = verified.result()
        except ValueError as refusal:
            return how, str(refusal)
        return f"{how}; {word}", None

    def _tell_sidecars(self, unit: Unit) -> None:
        """Let the sidecars of `unit` know where their target stands."""
        for sidecar in self._sidecars(unit):
            if sidecar.session is not None:
                sidecar.session.post(self._target_message(unit))

    def _target_message(self, unit: Unit) -> dict[str, Any]:
        return {
            "type": "target",
            "module": unit.name,
            "state": unit.state,
            "pid": unit.pid,
            "generation": unit.generation,
        }

    async def _follow_main(
        self, unit: Unit, pid: int, handed: asyncio.Future[ExitStatus]
    ) -> ExitStatus:
        """How the main pid a module named ended.

        It is reaped here once it is adopted; a main pid that another of the
        module's processes reaps is seen to end through a pidfd. A stop never
        waits on it for ever: `_kill` gives up on it a moment after SIGKILL.
        """
        if process_start(pid) == unit.main_started:
            gone = ended(pid)
            try:
                await asyncio.wait({handed, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
        if not handed.done():
            # A zombie of this process is reaped at any moment.
            await asyncio.wait({handed}, timeout=SWEEP_POLL)
        if handed.done():
            return handed.result()
        self.processes.unwatch(pid)
        return ExitStatus(None, None)

    def _leave_main(self, unit: Unit, pid: int, generation: int) -> None:
        """A main pid that SIGKILL did not end in time is left behind."""
        if unit.generation != generation or unit.main_pid != pid or not is_alive(pid):
            return
        unit.log.note(f"main pid {pid} outlived SIGKILL; leaving it")
        log.warning("%s: main pid %d outlived SIGKILL; leaving it", unit.name, pid)
        self.processes.unwatch(pid, ExitStatus(None, signal.SIGKILL))

    def _signal_main(self, unit: Unit, child: Child, sig: int) -> None:
        """Signal the main pid the module named, when the group's signal and
        the strays' do not reach it, and it is still the process it named."""
        pid = unit.main_pid
        if not pid or pid == child.pid or unit.main_started is None:
            return
        if process_start(pid) != unit.main_started:
            return
        if process_group(pid) == child.pgid or carries_token(pid, unit.token):
            return
        self.processes.kill(pid, sig)

    # Signs of life and health, once a module is ready.

    def _arm_heartbeat(self, unit: Unit) -> None:
        heartbeat = unit.spec.heartbeat
        if heartbeat is None:
            return
        if unit.heartbeat_timer is not None:
            unit.heartbeat_timer.cancel()
        unit.heartbeat_timer = asyncio.get_running_loop().call_later(
            heartbeat.interval, self._heartbeat_due, unit, unit.generation
        )

    def _heartbeat(self, unit: Unit) -> None:
        unit.last_heartbeat = time.time()
        if unit.state in UP and not unit.stopping:
            self._arm_heartbeat(unit)

    def _heartbeat_due(self, unit: Unit, generation: int) -> None:
        """The heartbeat timer of start `generation` ran out; one of an earlier
        start has nothing to say about this one."""
        if generation == unit.generation:
            unit.heartbeat_timer = None
            self._missed_heartbeat(unit)

    def _missed_heartbeat(self, unit: Unit, cause: str | None = None) -> None:
        """Mark a module hung and stop it: its heartbeat is overdue, or it
        said so itself (`cause`)."""
        if unit.heartbeat_timer is not None:
            unit.heartbeat_timer.cancel()
            unit.heartbeat_timer = None
        heartbeat = unit.spec.heartbeat
        if unit.child is None or unit.stopping or unit.hung or heartbeat is None:
            return
        unit.hung = True
        cause = cause or f"no heartbeat for {format_duration(heartbeat.interval)}"
        self._set(unit, HUNG, f"{cause}; stopping it")
        self._terminate(unit)

    def _disarm(self, unit: Unit) -> None:
        if unit.heartbeat_timer is not None:
            unit.heartbeat_timer.cancel()
            unit.heartbeat_timer = None
        if unit.health_task is not None:
            unit.health_task.cancel()
            unit.health_task = None

    async def _probe_health(self, unit: Unit, child: Child) -> None:
        """Probe the module, one probe at a time, until its process ends."""
        spec = unit.spec.health
        assert spec is not None
        env = self._environment(unit)
        ready_at = time.monotonic()
        failures = 0
        first = True
        while child.running and not unit.stopping:
            # The first probe runs at once: dependents may wait for it.
            if not first:
                await asyncio.sleep(spec.interval)
            first = False
            problem = await probe(spec, self.processes.spawn, env, unit.spec.workdir)
            if not child.running or unit.stopping:
                return
            if problem is None:
                failures = 0
                if unit.health != "passing":
                    unit.health, unit.health_detail = "passing", ""
                    self.bus.publish(
                        "health", module=unit.name, health="passing", detail=""
                    )
                    if unit.state == DEGRADED:
                        self._set(
                            unit, READY, f"health passing again ({spec.describe()})"
                        )
                    else:
                        self._touch(unit)
                continue
            if time.monotonic() - ready_at < spec.start_period:
                continue
            failures += 1
            unit.health_detail = problem
            if unit.health != "failing":
                unit.health = "failing"
                self.bus.publish(
                    "health", module=unit.name, health="failing", detail=problem
                )
            if (
                spec.restart_after
                and failures >= spec.threshold + spec.restart_after
                and unit.state == DEGRADED
            ):
                unit.unhealthy = True
                unit.log.note(
                    f"unhealthy after {failures} failed probes; restarting it"
                )
                self._terminate(unit)
                return
            if failures >= spec.threshold and unit.state in (READY, DEGRADED):
                probes = plural(failures, "failed health probe")
                self._set(unit, DEGRADED, f"{probes} ({spec.describe()}: {problem})")

    # The module contract and the notify protocol.

    def contract_hello(
        self, hello: dict[str, Any], session: Session
    ) -> str | dict[str, Any]:
        name = hello.get("module")
        if not isinstance(name, str):
            return 'the hello names no module ("module": "web")'
        unit = self.units.get(name)
        if unit is None:
            return f"no module named '{shown(name)}' in the plan"
        if unit.child is None or not unit.child.running:
            return f"{unit.name} has no running process"
        if hello.get("token") != unit.token:
            return "wrong or stale token: it is not the token of this start"
        version = hello.get("api")
        if not isinstance(version, str):
            return 'the hello has no API version ("api": "1.0")'
        if version != unit.spec.api_version:
            return (
                f"the hello says API {visible(version[:20])}, the manifest declares "
                f"{unit.spec.api_version}"
            )
        misfit = api_fits(version, unit.spec.compatibility)
        if misfit is not None:
            return misfit
        capabilities = hello.get("capabilities", [])
        if not isinstance(capabilities, list) or not all(
            isinstance(c, str) for c in capabilities
        ):
            return "capabilities must be a list of names"
        declared = {unit.name, *unit.spec.provides}
        undeclared = sorted(set(capabilities) - declared)
        if undeclared:
            return (
                f"capability '{shown(undeclared[0])}' is not declared in "
                f"{unit.spec.file} (provides)"
            )
        if unit.session is not None:
            unit.session.close()
        unit.session = session
        unit.log.note(f"welcomed on the contract socket (API {version})")
        log.info("%s: welcomed on the contract socket (API %s)", unit.name, version)
        self.bus.publish("contract", module=unit.name, welcomed=True, api=version)
        owner = self.units.get(unit.owner or "")
        if owner is not None:
            asyncio.get_running_loop().call_soon(
                lambda: session.post(self._target_message(owner))
            )
        router = self.router
        logs = CAPABILITY in (unit.name, *unit.spec.provides)
        if router is not None and session.role == LOGGER_ROLE and logs:
            log.info("%s: receives every module's output", unit.name)
            asyncio.get_running_loop().call_soon(router.attach, session, unit.name)
        heartbeat = unit.spec.heartbeat
        interval = (
            heartbeat.interval if heartbeat and heartbeat.via == "contract" else None
        )
        return {
            "type": "welcome",
            "api": api_version(),
            "module": unit.name,
            "heartbeat": interval,
        }

    def contract_refused(self, module: str | None, reason: str) -> None:
        # Both may hold what the client said: shown escaped, and shortened.
        unit = self.units.get(module) if module else None
        who = shown(module) if module else None
        reason = visible(reason)
        log.warning("contract: refused %s: %s", who or "a client", reason)
        self.bus.publish("contract", module=who, welcomed=False, reason=reason)
        if unit is not None:
            unit.log.note(f"refused on the contract socket: {reason}")

    def contract_hung_up(self, session: Session, reason: str) -> None:
        log.warning("%s: contract: hung up: %s", session.module, reason)
        self.bus.publish("contract", module=session.module, hung_up=True, reason=reason)
        unit = self.units.get(session.module)
        if unit is not None and unit.session is session:
            unit.log.note(f"hung up on the contract socket: {reason}")

    def contract_closed(self, session: Session) -> None:
        unit = self.units.get(session.module)
        if unit is not None and unit.session is session:
            unit.session = None
        if self.router is not None:
            if self.router.session is session:
                log.warning(
                    "%s: the logging module is gone; output goes to the fallback",
                    session.module,
                )
            self.router.detach(session)

    def contract_message(self, session: Session, message: dict[str, Any]) -> None:
        unit = self.units.get(session.module)
        if unit is None or unit.session is not session:
            return
        kind = message["type"]
        if kind == "ready":
            self._said_ready(unit, "said ready on the contract socket")
        elif kind == "heartbeat":
            self._heartbeat(unit)
        elif kind == "status":
            self._status(unit, str(message.get("text", "")))
        elif kind == "stopping":
            unit.log.note("says it is stopping")
        elif kind == "verify":
            self._verify(unit, session, message)
        elif kind == "metrics":
            self._metrics(unit, message)
        elif kind == "ack" and self.router is not None:
            if self.router.session is session and isinstance(message.get("seq"), int):
                self.router.ack(message["seq"])
        else:
            log.debug(
                "%s: ignored a contract message of type '%s'", unit.name, shown(kind)
            )

    def _verify(
        self, verifier: Unit, session: Session, message: dict[str, Any]
    ) -> None:
        """A verifier sidecar vouches for its target's process and token."""
        target = self.units.get(verifier.owner or "")
        if target is None or message.get("target") != target.name:
            session.post(
                {
                    "type": "verified",
                    "ok": False,
                    "reason": "you verify only your target",
                }
            )
            return
        child = target.child
        if child is None or message.get("pid") != child.pid:
            problem = f"pid {shown(message.get('pid'))} is not {target.name}'s process"
        elif message.get("token") != target.token:
            problem = "the token in its environment is not the token of this start"
        else:
            problem = None
        session.post(
            {
                "type": "verified",
                "target": target.name,
                "ok": problem is None,
                "reason": problem,
            }
        )
        if target.verified is None or target.verified.done():
            return
        if problem is None:
            target.verified.set_result(f"verified by {verifier.name}")
        else:
            target.verified.set_exception(
                ValueError(f"{verifier.name} did not verify it: {problem}")
            )

    def _metrics(self, sidecar: Unit, message: dict[str, Any]) -> None:
        """Figures a metrics sidecar sampled from its target."""
        target = self.units.get(sidecar.owner or "")
        if target is None:
            return
        figures = {
            key: message[key]
            for key in ("cpu", "rss", "open_files", "processes", "threads")
            if isinstance(message.get(key), int | float)
        }
        target.metrics = {**figures, "time": time.time(), "by": sidecar.name}
        self.bus.publish("metrics", module=target.name, by=sidecar.name, **figures)

    def _said_ready(self, unit: Unit, how: str) -> None:
        check = unit.check
        if check is not None and not check.said.done():
            check.said.set_result(how)

    def _status(self, unit: Unit, text: str) -> None:
        text = visible(text.replace("\n", " ")[:200])
        if text == unit.status_text:
            return
        unit.status_text = text
        # At most one event per STATUS_EVERY: a flood of status lines costs
        # subscribers little, and the last line is always published.
        name = unit.name
        if name in self._status_due:
            self._status_due[name] = text
            return
        loop = asyncio.get_running_loop()
        wait = self._status_at.get(name, -STATUS_EVERY) + STATUS_EVERY - loop.time()
        if wait <= 0:
            self._status_at[name] = loop.time()
            self.bus.publish("status", module=name, text=text)
            return
        self._status_due[name] = text
        loop.call_later(wait, self._status_now, name)

    def _status_now(self, name: str) -> None:
        text = self._status_due.pop(name, None)
        if text is not None:
            self._status_at[name] = asyncio.get_running_loop().time()
            self.bus.publish("status", module=name, text=text)

    def _notified(
        self, unit: Unit, child: Child | None, fields: dict[str, str]
    ) -> None:
        """A datagram on the NOTIFY_SOCKET of the start of `unit` that spawned
        `child`, from root or one of the module's processes."""
        if fields.get("READY") == "1":
            self._said_ready(unit, "sent READY=1")
            if unit.reason == "reloading" and unit.state in UP:
                self._set(unit, unit.state, "reloaded")
        if "STATUS" in fields:
            self._status(unit, fields["STATUS"])
        if fields.get("RELOADING") == "1" and unit.state in UP:
            self._set(unit, unit.state, "reloading")
        if fields.get("STOPPING") == "1":
            unit.log.note("says it is stopping (STOPPING=1)")
        if fields.get("WATCHDOG") == "1":
            self._heartbeat(unit)
        elif fields.get("WATCHDOG") == "trigger" and unit.child is not None:
            self._missed_heartbeat(unit, "it reported itself hung (WATCHDOG=trigger)")
        if "MAINPID" in fields and child is not None:
            self._main_pid(unit, child, fields["MAINPID"])
        if "ERRNO" in fields:
            value = fields["ERRNO"]
            if re.fullmatch(r"[0-9]{1,5}", value):
                unit.log.note(f"says ERRNO={int(value)}")
            else:
                self._notify_refused(unit, "ERRNO", value, "not a number")

    def _main_pid(self, unit: Unit, child: Child, value: str) -> None:
        """Take MAINPID=value: plain digits naming a live process of the module."""
        pid = int(value) if re.fullmatch(r"[0-9]{1,10}", value) else None
        if pid is None:
            problem = "not a pid"
        elif pid <= 1 or pid == os.getpid():
            problem = "not one of its processes"
        elif not is_alive(pid):
            problem = "no such process"
        elif not self.processes.belongs(child, pid):
            problem = "not one of its processes"
        else:
            unit.main_pid, unit.main_started = pid, process_start(pid)
            return
        self._notify_refused(unit, "MAINPID", value, problem)

    def _notify_refused(self, unit: Unit, key: str, value: str, problem: str) -> None:
        """Log, note and publish a refused notify assignment, so many a second."""
        held = unit.notify.complaints.allow() if unit.notify is not None else 0
        if held is None:
            return
        said = f"{key}={shown(value)}"
        more = f" (and {held} more before it)" if held else ""
        log.warning("%s: %s refused: %s%s", unit.name, said, problem, more)
        unit.log.note(f"{said} refused: {problem}")
        self.bus.publish(
            "notify", module=unit.name, said=said, refused=problem, held=held
        )

    async def _sweep(self, unit: Unit, child: Child) -> None:
        """Stop what is left of a module once its main process has ended."""
        if not self.processes.alive(child):
            return
        if unit.kill_timer is None:
            unit.log.note("processes left behind; stopping them")
            self._terminate(unit)
        deadline = time.monotonic() + unit.spec.stop.timeout + 2.0
        while self.processes.alive(child) and time.monotonic() < deadline:
            await asyncio.sleep(SWEEP_POLL)

    def _stop(self, unit: Unit, reason: str, *, blocked: str | None = None) -> None:
        """Send the stop signal; the supervising task finishes the transition."""
        if unit.timer is not None:
            unit.timer.cancel()
            unit.timer = None
            self._set(unit, BLOCKED if blocked else STOPPED, blocked or reason)
            return
        if unit.child is None or unit.stopping:
            return
        unit.stopping = True
        unit.blocked_after_stop = blocked
        self._set(unit, STOPPING, f"{reason}; sent {unit.spec.stop.signal}")
        self._terminate(unit)

    def _terminate(self, unit: Unit) -> None:
        """Signal the whole module, and SIGKILL it when the stop timeout runs out."""
        child = unit.child
        if child is None:
            return
        number = signal.Signals[unit.spec.stop.signal]
        strays = self.processes.signal(child, number)
        self._signal_main(unit, child, number)
        if strays:
            unit.log.note(
                f"sent {unit.spec.stop.signal} to {strays} processes outside its group"
            )
        if unit.kill_timer is None:
            unit.kill_timer = asyncio.get_running_loop().call_later(
                unit.spec.stop.timeout, self._kill, unit, child
            )

    def _kill(self, unit: Unit, child: Child) -> None:
        unit.kill_timer = None
        unit.killed = True
        unit.log.note(
            f"still running {format_duration(unit.spec.stop.timeout)} after "
            f"{unit.spec.stop.signal}; sending SIGKILL"
        )
        self.processes.signal(child, signal.SIGKILL)
        self._signal_main(unit, child, signal.SIGKILL)
        if unit.main_pid and unit.main_pid != child.pid:
            asyncio.get_running_loop().call_later(
                FINAL_SWEEP_GRACE,
                self._leave_main,
                unit,
                unit.main_pid,
                unit.generation,
            )

    def _ended(
        self, unit: Unit, status: ExitStatus | None, stage: str, error: str | None
    ) -> None:
        """The process is gone: decide between stopped, restarting and failed."""
        described = error or (status.describe() if status else "ended")
        if status is not None:
            unit.last_exit = status.describe()
            unit.last_status = status
        asked_to_restart = unit.stopping and unit.restart_after_stop
        self._decide(unit, status, stage, described)
        # The end of the plan's main module is the end of the system.
        final = unit.state == FAILED or (unit.state == STOPPED and unit.completed)
        if unit.name == self.plan.main and final and not self.shutting_down:
            self.shutdown(f"the main module {unit.name} ended ({described})")
        # A sidecar restarts with its target; a tight one takes its target along.
        if unit.state == RESTARTING or asked_to_restart:
            for sidecar in self._sidecars(unit):
                if sidecar.child is not None and not sidecar.stopping:
                    sidecar.restart_after_stop = True
                    self._stop(sidecar, f"restarting with {unit.name}")
        owner = self.units.get(unit.owner or "")
        tight = unit.spec.binding == "tight" and unit.state in (RESTARTING, FAILED)
        if owner is not None and tight and owner.child and not owner.stopping:
            owner.restart_after_stop = unit.state == RESTARTING
            self._stop(owner, f"its sidecar {unit.name} ended")

    def _decide(
        self, unit: Unit, status: ExitStatus | None, stage: str, described: str
    ) -> None:
        # A stop that was asked for.
        if unit.stopping:
            unit.stopping = False
            if unit.killed:
                timeout = format_duration(unit.spec.stop.timeout)
                how = f"killed with SIGKILL after {timeout}"
            else:
                how = status.describe() if status else "never started"
            blocked, unit.blocked_after_stop = unit.blocked_after_stop, None
            if unit.next_spec is not None:
                unit.spec, unit.next_spec = unit.next_spec, None
            if unit.restart_after_stop:
                unit.restart_after_stop = False
                unit.starts.clear()
                unit.completed = False
                self._set(unit, STOPPED, f"restart requested; {how}")
                self._mark(unit)
            elif blocked:
                self._set(unit, BLOCKED, blocked)
            else:
                self._set(unit, STOPPED, f"{unit.down_reason or 'stopped'}; {how}")
            return

        # The process ended on its own.
        policy = unit.spec.restart.policy
        failed = stage != "running" or status is None or not status.success
        if not failed and policy != "always":
            unit.completed = True
            self._set(unit, STOPPED, f"{described}; finished")
            return
        if unit.target == "down":
            self._set(unit, STOPPED, described)
            return
        if policy == "never":
            self._fail(unit, stage, described)
            return
        window = unit.spec.restart.window
        now = time.monotonic()
        while unit.starts and unit.starts[0] < now - window:
            del unit.starts[0]
        if len(unit.starts) >= unit.spec.restart.limit:
            limit = (
                f"start limit spent ({len(unit.starts)} in {format_duration(window)})"
            )
            self._fail(unit, stage, described, limit)
            return
        ran = time.time() - unit.started_at if unit.started_at else 0.0
        # A module that ran a while and then died is started again at once;
        # backoff is for modules that die young.
        delay = (
            0.0 if ran >= STABLE_RUN else unit.spec.restart.delay_for(len(unit.starts))
        )
        unit.restarts += 1
        self._set(
            unit,
            RESTARTING,
            f"{described}; restart {unit.restarts} in {delay:.2f}s",
            exit=described,
            stage=stage,
            delay=delay,
        )
        unit.timer = asyncio.get_running_loop().call_later(
            delay, self._restart_due, unit
        )

    def _restart_due(self, unit: Unit) -> None:
        unit.timer = None
        self._mark(unit)

    # Failure and the recovery strategies.

    def _fail(
        self, unit: Unit, stage: str, error: str, detail: str | None = None
    ) -> None:
        """The module has failed for good: apply its `on_failure` strategy."""
        blocks = sorted(
            u.name for u in self._hard_closure(unit, downward=False) if u.target == "up"
        )
        recent = [line for line in unit.log.tail(12) if line.stream != "sys"][-8:]
        unit.failure = {
            "stage": stage,
            "error": error if not detail else f"{error}; {detail}",
            "time": time.time(),
            "restarts": unit.restarts,
            "exit": unit.last_exit,
            "file": unit.spec.file,
            "blocks": blocks,
            "logs": [line.text for line in recent],
            "streams": [line.stream for line in recent],
        }
        reason = error
        if unit.restarts:
            plural = "s" if unit.restarts != 1 else ""
            reason = f"{error} after {unit.restarts} restart{plural}"
        if detail:
            reason = f"{reason}; {detail}"
        self._set(unit, FAILED, reason, stage=stage, blocks=blocks)
        strategy = unit.spec.on_failure
        if strategy == "failover":
            if self._failover(unit):
                return
            strategy = "bluescreen" if unit.spec.critical else "degrade"
        if strategy == "fallback" and not self.fall_back(
            f"{unit.name} failed: {error}"
        ):
            strategy = "bluescreen" if unit.spec.critical else "degrade"
        if strategy == "shutdown":
            self.shutdown(f"{unit.name} failed: {error}", code=EXIT_MODULE_FAILED)
        elif strategy == "bluescreen":
            self.rescue = unit.name
            self.bus.publish("bluescreen", module=unit.name, **unit.failure)

    def _failover(self, unit: Unit) -> bool:
        """Hand each capability the failed unit was chosen for to its next provider."""
        successors: list[Unit] = []
        for capability, names in self.providers.items():
            if not names or names[0] != unit.name:
                continue
            rest = [n for n in names[1:] if self.units[n].state != FAILED]
            if not rest:
                continue
            successor = self.units[rest[0]]
            names.remove(successor.name)
            names.remove(unit.name)
            names[:0] = [successor.name]
            names.append(unit.name)
            successor.target = "up"
            successor.standby = False
            successors.append(successor)
            # Dependents still running were talking to the failed provider:
            # restart them, to start again once the successor is ready.
            repointed = []
            for dependent in self.units.values():
                via = [
                    e
                    for e in self._edges_from.get(dependent.name, ())
                    if e.hard and e.via == capability
                ]
                if via and dependent.child is not None and not dependent.stopping:
                    dependent.restart_after_stop = True
                    self._stop(
                        dependent,
                        f"{capability} moved from {unit.name} to {successor.name}",
                    )
                    repointed.append(dependent.name)
            log.info(
                "%s: failing over from %s to %s%s",
                capability,
                unit.name,
                successor.name,
                f"; restarting {', '.join(repointed)} on it" if repointed else "",
            )
            self.bus.publish(
                "failover",
                capability=capability,
                failed=unit.name,
                provider=successor.name,
                reason=f"{unit.name} failed",
                dependents=repointed,
            )
        if successors:
            self._rebuild_dependents()
            for successor in successors:
                self._touch(successor)
        return bool(successors)

    # The graph at run time: providers can change, so edges resolve late.

    def _resolve(self, name: str) -> str | None:
        if name in self.units:
            return name
        names = self.providers.get(name)
        return names[0] if names else None

    def _targets(self, unit: Unit) -> Iterable[tuple[Edge, Unit | None]]:
        for edge in self._edges_from.get(unit.name, ()):
            name = edge.via if edge.kind == "sidecar" else self._resolve(edge.via)
            yield edge, self.units.get(name) if name else None

    def _bind_sidecars(self) -> None:
        for unit in self.units.values():
            unit.owner = None
        for edge in self.plan.edges:
            if edge.kind == "sidecar" and edge.via in self.units:
                self.units[edge.via].owner = edge.src

    def _sidecars(self, unit: Unit) -> list[Unit]:
        return [
            self.units[edge.via]
            for edge in self._edges_from.get(unit.name, ())
            if edge.kind == "sidecar" and edge.via in self.units
        ]

    def _rebuild_dependents(self) -> None:
        self._dependents = {name: set() for name in self.units}
        for unit in self.units.values():
            for _, target in self._targets(unit):
                if target is not None:
                    self._dependents[target.name].add(unit.name)

    def _hard_closure(self, unit: Unit, *, downward: bool) -> list[Unit]:
        """The hard dependencies (downward) or hard dependents of `unit`, all levels."""
        found: dict[str, Unit] = {}
        queue = [unit]
        while queue:
            current = queue.pop()
            if downward:
                neighbours = [
                    t for e, t in self._targets(current) if e.hard and t is not None
                ]
            else:
                neighbours = [
                    self.units[name]
                    for name in self._dependents.get(current.name, ())
                    if any(
                        e.hard and t is current
                        for e, t in self._targets(self.units[name])
                    )
                ]
            for neighbour in neighbours:
                if neighbour.name not in found and neighbour is not unit:
                    found[neighbour.name] = neighbour
                    queue.append(neighbour)
        return list(found.values())

    # State changes and what they tell the world.

    def _set(self, unit: Unit, state: str, reason: str, **extra: Any) -> None:
        old = unit.state
        if old == state and unit.reason == reason:
            return
        unit.state = state
        unit.reason = reason
        unit.since = time.time()
        self._counts[old] -= 1
        self._counts[state] += 1
        if old != state:
            log.info("%s %s -> %s (%s)", unit.name, old.upper(), state.upper(), reason)
        if state == READY and self.rescue == unit.name:
            self.rescue = None
        self.bus.publish(
            "state",
            module=unit.name,
            old=old,
            new=state,
            reason=reason,
            pid=unit.pid,
            restarts=unit.restarts,
            target=unit.target,
            standby=unit.standby,
            blocked_by=unit.blocked_by if state == BLOCKED else None,
            last_exit=unit.last_exit,
            started_at=unit.started_at,
            ready_at=unit.ready_at,
            health=unit.health if unit.spec.health else None,
            **({"failure": unit.failure} if state == FAILED else {}),
            **extra,
        )
        if unit.name in self._pending_boot and (
            state in (READY, FAILED, BLOCKED) or (state == STOPPED and not unit.busy)
        ):
            self._pending_boot.discard(unit.name)
            if not self._pending_boot:
                self._boot_finished()
        for entry in list(self._waiters):
            waited, wanted, future = entry
            if waited is unit and not future.done() and wanted(unit):
                future.set_result(None)
        if old != state:
            self._tell_sidecars(unit)
        self._touch(unit)

    def _forget(self, unit: Unit) -> None:
        del self.units[unit.name]
        self._counts[unit.state] -= 1
        self._pending_boot.discard(unit.name)
        self._edges_from.pop(unit.name, None)
        unit.log.close()
        self._rebuild_dependents()
        self.bus.publish("removed", module=unit.name)

    def _boot_finished(self) -> None:
        self.boot_took = time.time() - self.boot_started
        if self.shutting_down:
            return
        counts = {state: count for state, count in self._counts.items() if count}
        self.bus.publish("boot", took=round(self.boot_took, 4), counts=counts)

    def _update_system(self) -> None:
        if self.shutting_down or self._switch_to is not None:
            return
        if self.rescue:
            self._set_system("rescue", f"{self.rescue} failed and is critical")
        elif self._pending_boot:
            self._set_system("starting", self.system_reason)
        elif any(self._counts[state] for state in TROUBLE):
            troubled = sorted(
                f"{u.name} {u.state}" for u in self.units.values() if u.state in TROUBLE
            )
            self._set_system("degraded", ", ".join(troubled))
        else:
            self._set_system("running", self._up_reason())

    def _up_reason(self) -> str:
        """`every module is up`, naming those that are not: stopped on
        request, or between two runs."""
        stopped, restarting = [], []
        for unit in self.units.values():
            if unit.state == RESTARTING:
                restarting.append(unit.name)
            elif (
                unit.state == STOPPED
                and unit.target == "down"
                and not (unit.standby or unit.completed or unit.removing)
            ):
                stopped.append(unit.name)
        parts = []
        for names, why in ((stopped, "stopped"), (restarting, "restarting")):
            if names:
                names.sort()
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{shown} ({why})")
        if not parts:
            return "every module is up"
        return f"every module is up but {'; '.join(parts)}"

    def _set_system(self, state: str, reason: str) -> None:
        if state == self.system and reason == self.system_reason:
            return
        old, self.system, self.system_reason = self.system, state, reason
        if old != state:
            log.info("system %s -> %s (%s)", old.upper(), state.upper(), reason)
        self.bus.publish(
            "system", old=old, new=state, reason=reason, plan=self.plan.name
        )

    def _check_finished(self) -> None:
        if any(unit.busy for unit in self.units.values()):
            return
        self._finished.set()

    # What clients see.

    def record(self, unit: Unit) -> dict[str, Any]:
        """Everything a client shows about one module."""
        spec = unit.spec
        return {
            "name": unit.name,
            "state": unit.state,
            "reason": unit.reason,
            "since": unit.since,
            "pid": unit.pid,
            "target": unit.target,
            "standby": unit.standby,
            "restarts": unit.restarts,
            "last_exit": unit.last_exit,
            "started_at": unit.started_at,
            "ready_at": unit.ready_at,
            "first_started_at": unit.first_started_at,
            "first_ready_at": unit.first_ready_at,
            "description": spec.description,
            "file": spec.file,
            "path": unit.path,
            "critical": spec.critical,
            "sidecar": spec.sidecar,
            "provides": list(spec.provides),
            "ready_check": spec.ready.describe(),
            "on_failure": spec.on_failure,
            "deps": [
                {
                    "kind": edge.kind,
                    "via": edge.via,
                    "module": target.name if target else None,
                }
                for edge, target in self._targets(unit)
            ],
            "blocked_by": unit.blocked_by,
            "failure": unit.failure,
            "health": unit.health if spec.health else None,
            "health_detail": unit.health_detail,
            "health_check": spec.health.describe() if spec.health else None,
            "heartbeat": spec.heartbeat.interval if spec.heartbeat else None,
            "last_heartbeat": unit.last_heartbeat,
            "status_text": unit.status_text,
            "contract": unit.session is not None,
            "main_pid": unit.main_pid,
            "network": spec.network,
            "unmet": unit.unmet,
            "owner": unit.owner,
            "metrics": unit.metrics,
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole state at one sequence number."""
        return {
            "seq": self.bus.seq,
            "boot": self.bus.boot_id,
            "system": self.system_record(),
            "modules": [self.record(self.units[name]) for name in sorted(self.units)],
        }

    def system_record(self) -> dict[str, Any]:
        return {
            "state": self.system,
            "reason": self.system_reason,
            "plan": self.plan.name,
            "plan_dir": self.plan.dir,
            "boot_started": self.boot_started,
            "boot_took": self.boot_took,
            "pid": os.getpid(),
            "rescue": self.rescue,
            "fallback_of": self.fallback_of,
            "fallback_reason": self.fallback_reason,
            "fallback_plan": self.fallback_plan.name if self.fallback_plan else None,
            "counts": {state: count for state, count in self._counts.items() if count},
            "providers": {cap: list(names) for cap, names in self.providers.items()},
            "orphans_reaped": getattr(self.processes, "orphans_reaped", 0),
            "pid1": self.pid1,
            "main": self.plan.main,
        }

    def why(self, name: str) -> list[str]:
        """The chain of reasons from a module down to the root cause."""
        return [
            f"{link['module']} {link['state']}: {link['reason']}"
            for link in self.why_links(name)
        ]

    def stays_down(self, name: str) -> bool:
        """Whether a module is down and stays so until it is started: it was
        stopped on request, or with something it requires."""
        unit = self.units[name]
        return (
            unit.target == "down"
            and unit.state in (STOPPED, INACTIVE)
            and not (unit.standby or unit.completed or unit.removing)
        )

    def why_links(self, name: str) -> list[dict[str, str]]:
        """`why` as records: module, state and reason, the root cause last."""
        links: list[dict[str, str]] = []
        seen: set[str] = set()
        unit: Unit | None = self.units[name]
        while unit is not None and unit.name not in seen:
            seen.add(unit.name)
            links.append(
                {"module": unit.name, "state": unit.state, "reason": unit.reason}
            )
            unit = self.units.get(unit.blocked_by) if unit.blocked_by else None
        return links


def diff_plans(old: Plan, new: Plan) -> dict[str, list[str]]:
    """Which modules a new plan adds, removes and changes against an old one."""
    return {
        "added": sorted(set(new.modules) - set(old.modules)),
        "removed": sorted(set(old.modules) - set(new.modules)),
        "changed": sorted(
            name
            for name in set(old.modules) & set(new.modules)
            if old.modules[name] != new.modules[name]
        ),
    }
