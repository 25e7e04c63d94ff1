"""The orchestrator's state machine on fake processes: fast and deterministic.

Dependencies, readiness order, restarts with backoff, the start limit,
blocking, stop ordering and the recovery strategies, all through the one seam
the orchestrator has over the system (`tests.fakes.FakeProcesses`).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from partenza.orchestrator import EXIT_MODULE_FAILED, Orchestrator
from partenza.plan import Plan, compile_plan
from tests.conftest import write_plan
from tests.fakes import FakeProcesses, crashes, ignores_sigterm

FAST_RESTART = """
[restart]
delay = "10ms"
max_delay = "40ms"
limit = 4
window = "10s"
"""


def plan_of(tmp_path: Path, manifests: dict[str, str]) -> Plan:
    texts = {}
    for name, body in manifests.items():
        texts[name] = 'exec = "sleep 1000"\n' + body
    return compile_plan(write_plan(tmp_path / "plan", texts))


class Run:
    """An orchestrator on fake processes, with every event it published."""

    def __init__(self, plan: Plan, processes: FakeProcesses) -> None:
        self.processes = processes
        self.orchestrator = Orchestrator(plan, state_dir=None, processes=processes)  # type: ignore[arg-type]
        self.events: list[dict[str, Any]] = []
        self.orchestrator.bus.subscribe(self.events.append)
        self.task: asyncio.Task[int] | None = None

    def state(self, name: str) -> str:
        return self.orchestrator.units[name].state

    def states(self) -> dict[str, str]:
        return {name: unit.state for name, unit in self.orchestrator.units.items()}

    def transitions(self, name: str) -> list[str]:
        return [
            e["new"]
            for e in self.events
            if e["type"] == "state" and e["module"] == name
        ]

    async def start(self) -> None:
        self.task = asyncio.create_task(self.orchestrator.run())

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            assert self.task is not None
            if self.task.done():
                raise AssertionError(f"the orchestrator ended early: {self.states()}")
            if loop.time() > deadline:
                raise AssertionError(f"timed out; states: {self.states()}")
            await asyncio.sleep(0.002)

    async def settle(self, name: str, state: str, timeout: float = 5.0) -> None:
        await self.until(lambda: self.state(name) == state, timeout)

    async def finish(self, timeout: float = 5.0) -> int:
        assert self.task is not None
        self.orchestrator.shutdown("test over")
        return await asyncio.wait_for(self.task, timeout)


def scenario(
    manifests: dict[str, str], behaviours: dict[str, Any] | None = None
) -> Callable[[Callable[[Run], Coroutine[Any, Any, None]]], Callable[[Path], None]]:
    """Run the decorated coroutine against an orchestrator booting `manifests`."""

    def decorate(
        body: Callable[[Run], Coroutine[Any, Any, None]],
    ) -> Callable[[Path], None]:
        def test(tmp_path: Path) -> None:
            async def main() -> None:
                run = Run(plan_of(tmp_path, manifests), FakeProcesses(behaviours))
                await run.start()
                try:
                    await body(run)
                finally:
                    if run.task is not None and not run.task.done():
                        await run.finish()

            asyncio.run(main())

        test.__name__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return decorate


@scenario({"c": "", "b": 'requires = ["c"]\n', "a": 'requires = ["b"]\n'})
async def test_hard_dependencies_start_in_order(run: Run) -> None:
    """A module is spawned only once what it requires is ready."""
    await run.until(lambda: all(s == "ready" for s in run.states().values()))
    assert [child.module for child in run.processes.children] == ["c", "b", "a"]
    ready_at = {
        e["module"]: e["seq"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "ready"
    }
    started_at = {
        e["module"]: e["seq"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "initializing"
    }
    assert ready_at["c"] < started_at["b"] and ready_at["b"] < started_at["a"]


@scenario({"x": "", "y": "", "z": ""})
async def test_independent_modules_start_together(run: Run) -> None:
    """Modules with no edges between them are all spawned in the first step."""
    await run.until(lambda: len(run.processes.children) == 3)
    first_ready = next(
        e["seq"] for e in run.events if e["type"] == "state" and e["new"] == "ready"
    )
    spawned = [
        e["seq"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "initializing"
    ]
    assert len(spawned) == 3 and max(spawned) < first_ready


@scenario(
    {
        "db": FAST_RESTART,
        "api": 'requires = ["db"]\n',
        "web": 'requires = ["api"]\n',
        "side": "",
    },
    {"db": crashes(1)},
)
async def test_failed_dependency_blocks_its_dependents_with_reasons(run: Run) -> None:
    """db spends its start limit; api and web are blocked and say why, to the root."""
    await run.settle("web", "blocked")
    assert run.state("db") == "failed"
    assert run.state("api") == "blocked"
    assert run.state("side") == "ready"
    db = run.orchestrator.units["db"]
    assert db.reason.startswith("exited 1 after 3 restarts; start limit spent (4 in ")
    api = run.orchestrator.units["api"]
    assert api.reason == "requires db, which failed"
    assert run.orchestrator.why("web") == [
        "web blocked: requires api, which is blocked",
        "api blocked: requires db, which failed",
        f"db failed: {db.reason}",
    ]
    failed = next(
        e for e in run.events if e["type"] == "state" and e["new"] == "failed"
    )
    assert failed["blocks"] == ["api", "web"]
    assert not run.processes.of("api") and not run.processes.of("web")
    await run.until(lambda: run.orchestrator.system == "degraded")


@scenario({"flaky": FAST_RESTART}, {"flaky": crashes(3)})
async def test_backoff_doubles_up_to_its_maximum_then_the_limit_fails_it(
    run: Run,
) -> None:
    """Delays 10, 20, 40 ms (capped at max_delay), then failed after 4 starts."""
    await run.settle("flaky", "failed")
    delays = [
        e["delay"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "restarting"
    ]
    assert delays == [0.01, 0.02, 0.04]
    starts = [child.spawned_at for child in run.processes.of("flaky")]
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, delays, strict=True))
    unit = run.orchestrator.units["flaky"]
    assert unit.restarts == 3 and unit.last_exit == "exited 3"


@scenario(
    {"always": 'restart = { policy = "always", delay = "10ms", limit = 3 }\n'},
    {"always": crashes(0)},
)
async def test_always_restarts_a_clean_exit_but_never_spins(run: Run) -> None:
    """Exit 0 at once under `always`: restarted with backoff, then failed."""
    await run.settle("always", "failed")
    assert len(run.processes.of("always")) == 3
    assert "exited 0" in run.orchestrator.units["always"].reason


@scenario({"job": "", "after_job": 'requires = ["job"]\n'}, {"job": crashes(0)})
async def test_a_clean_exit_under_on_failure_is_finished_not_failed(run: Run) -> None:
    """Exit 0 is done; what requires it still starts."""
    await run.settle("after_job", "ready")
    assert run.state("job") == "stopped"
    assert run.orchestrator.units["job"].reason == "exited 0; finished"
    assert len(run.processes.of("job")) == 1


@scenario({"once": 'restart = { policy = "never" }\n'}, {"once": crashes(2)})
async def test_never_fails_at_the_first_bad_exit(run: Run) -> None:
    await run.settle("once", "failed")
    assert len(run.processes.of("once")) == 1
    assert run.orchestrator.units["once"].reason == "exited 2"


async def _missing_program(run: Run) -> None:
    await run.settle("ghost", "failed")
    assert run.orchestrator.units["ghost"].reason.startswith(
        "cannot start sleep: No such file or directory after 3 restarts"
    )


def test_a_program_that_cannot_be_executed_counts_as_a_failed_start(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        processes = FakeProcesses()
        processes.missing.add("ghost")
        run = Run(plan_of(tmp_path, {"ghost": FAST_RESTART}), processes)
        await run.start()
        await _missing_program(run)
        await run.finish()

    asyncio.run(main())


@scenario({"c": "", "b": 'requires = ["c"]\n', "a": 'after = ["b"]\n'})
async def test_shutdown_stops_dependents_before_their_dependencies(run: Run) -> None:
    await run.until(lambda: all(s == "ready" for s in run.states().values()))
    assert await run.finish() == 0
    signalled = {
        name: run.processes.of(name)[0].signals[0][0] for name in ("a", "b", "c")
    }
    assert signalled["a"] < signalled["b"] < signalled["c"]
    assert set(run.states().values()) == {"stopped"}


@scenario({"stubborn": 'stop = { timeout = "50ms" }\n'}, {"stubborn": ignores_sigterm})
async def test_a_module_that_ignores_sigterm_is_killed_after_its_timeout(
    run: Run,
) -> None:
    await run.settle("stubborn", "ready")
    run.orchestrator.stop("stubborn")
    await run.settle("stubborn", "stopped")
    child = run.processes.of("stubborn")[0]
    (first, term), (second, kill) = child.signals
    assert (term, kill) == (signal.SIGTERM, signal.SIGKILL)
    assert second - first >= 0.045
    assert "killed with SIGKILL after 50ms" in run.orchestrator.units["stubborn"].reason


@scenario({"db": "", "api": 'requires = ["db"]\n', "cron": 'wants = ["db"]\n'})
async def test_stop_takes_hard_dependents_down_and_start_brings_requirements_up(
    run: Run,
) -> None:
    await run.until(lambda: all(s == "ready" for s in run.states().values()))
    run.orchestrator.stop("db")
    await run.settle("db", "stopped")
    assert run.state("api") == "stopped"
    assert run.state("cron") == "ready", "a soft dependent keeps running"
    assert run.orchestrator.units["api"].reason.startswith(
        "requires db, which was asked to stop"
    )
    await run.until(lambda: run.orchestrator.system == "running")
    assert run.orchestrator.system_reason == "every module is up but api, db (stopped)"
    run.orchestrator.start("api")
    await run.settle("api", "ready")
    assert run.state("db") == "ready"
    assert run.orchestrator.system_reason == "every module is up"
    assert len(run.processes.of("db")) == 2


@scenario(
    {"cache": FAST_RESTART, "app": 'wants = ["cache", "absent"]\n'},
    {"cache": crashes(1)},
)
async def test_soft_dependencies_are_waited_for_but_their_failure_is_not_fatal(
    run: Run,
) -> None:
    await run.settle("app", "ready")
    assert run.state("cache") == "failed"
    app_started = next(
        e["seq"]
        for e in run.events
        if e["type"] == "state" and e["module"] == "app" and e["new"] == "initializing"
    )
    cache_failed = next(
        e["seq"]
        for e in run.events
        if e["type"] == "state" and e["module"] == "cache" and e["new"] == "failed"
    )
    assert cache_failed < app_started


def test_a_running_dependent_is_blocked_then_comes_back_with_its_dependency(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        processes = FakeProcesses()
        run = Run(
            plan_of(tmp_path, {"db": FAST_RESTART, "api": 'requires = ["db"]\n'}),
            processes,
        )
        await run.start()
        await run.until(lambda: run.state("api") == "ready")
        # db now crashes at every start: it fails for good and api is taken down.
        processes.behaviours["db"] = crashes(1)
        processes.of("db")[0].exit(1)
        await run.settle("api", "blocked")
        assert run.state("db") == "failed"
        assert processes.of("api")[0].signals[0][1] == signal.SIGTERM
        # Mended: a start brings db back, and api follows by itself.
        processes.behaviours.pop("db")
        run.orchestrator.start("db")
        await run.settle("api", "ready")
        assert len(processes.of("api")) == 2
        await run.finish()

    asyncio.run(main())


@scenario(
    {"core": 'on_failure = "shutdown"\n' + FAST_RESTART, "other": ""},
    {"core": crashes(1)},
)
async def test_on_failure_shutdown_stops_the_system_with_a_failure_code(
    run: Run,
) -> None:
    assert run.task is not None
    code = await asyncio.wait_for(run.task, 5)
    assert code == EXIT_MODULE_FAILED
    assert run.state("other") == "stopped"
    system = [e for e in run.events if e["type"] == "system"]
    assert system[-1]["new"] == "stopping"
    assert system[-1]["reason"].startswith("core failed: exited 1")


@scenario(
    {"root": "critical = true\n" + FAST_RESTART, "app": 'requires = ["root"]\n'},
    {"root": crashes(1)},
)
async def test_a_critical_failure_enters_rescue_with_a_bluescreen_event(
    run: Run,
) -> None:
    await run.until(lambda: run.orchestrator.system == "rescue")
    bluescreen = [e for e in run.events if e["type"] == "bluescreen"]
    assert len(bluescreen) == 1
    assert bluescreen[0]["module"] == "root"
    assert bluescreen[0]["blocks"] == ["app"]
    assert bluescreen[0]["file"].endswith("root.toml")


@scenario(
    {
        "primary": 'provides = ["db"]\npriority = 10\non_failure = "failover"\n'
        + FAST_RESTART,
        "backup": 'provides = ["db"]\n',
        "api": 'requires = ["db"]\n',
    },
    {"primary": crashes(1)},
)
async def test_failover_starts_the_next_provider_and_dependents_follow(
    run: Run,
) -> None:
    await run.settle("api", "ready")
    assert run.state("primary") == "failed"
    assert run.state("backup") == "ready"
    failover = [e for e in run.events if e["type"] == "failover"]
    assert [(e["capability"], e["failed"], e["provider"]) for e in failover] == [
        ("db", "primary", "backup")
    ]
    deps = run.orchestrator.record(run.orchestrator.units["api"])["deps"]
    assert deps == [{"kind": "requires", "via": "db", "module": "backup"}]


@scenario({"web": ""})
async def test_restart_starts_a_new_process_and_counts_it(run: Run) -> None:
    await run.settle("web", "ready")
    unit = run.orchestrator.units["web"]
    run.orchestrator.restart("web")
    await run.until(lambda: unit.generation == 2 and unit.state == "ready")
    assert unit.restarts == 1
    assert run.transitions("web")[-4:] == [
        "stopping",
        "stopped",
        "initializing",
        "ready",
    ]


@scenario({"db": "", "api": 'requires = ["db"]\n', "cron": 'wants = ["db"]\n'})
async def test_a_restart_takes_what_requires_it_along(run: Run) -> None:
    await run.until(lambda: all(s == "ready" for s in run.states().values()))
    run.orchestrator.restart("db")
    db, api = run.orchestrator.units["db"], run.orchestrator.units["api"]
    await run.until(
        lambda: db.generation == 2 and api.generation == 2 and api.state == "ready"
    )
    assert run.orchestrator.units["cron"].generation == 1, "a soft dependent stays"
    started = {
        e["module"]: e["seq"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "initializing"
    }
    ready = {
        e["module"]: e["seq"]
        for e in run.events
        if e["type"] == "state" and e["new"] == "ready"
    }
    assert ready["db"] < started["api"], "api starts again once db is ready"
    stopping = next(
        e
        for e in run.events
        if e["type"] == "state" and e["module"] == "api" and e["new"] == "stopping"
    )
    assert stopping["reason"].startswith("requires db, which is restarting; ")


@scenario({"a": "", "b": FAST_RESTART}, {"b": crashes(1)})
async def test_the_boot_event_comes_once_with_the_final_counts(run: Run) -> None:
    await run.until(lambda: any(e["type"] == "boot" for e in run.events))
    await asyncio.sleep(0.05)
    boots = [e for e in run.events if e["type"] == "boot"]
    assert len(boots) == 1
    assert boots[0]["counts"] == {"ready": 1, "failed": 1}


@pytest.mark.parametrize("count", [300])
def test_a_long_chain_blocks_without_recursion(tmp_path: Path, count: int) -> None:
    """A failure at the root of a 300-deep chain blocks every module above it."""
    manifests = {"m000": FAST_RESTART}
    for index in range(1, count):
        manifests[f"m{index:03d}"] = f'requires = ["m{index - 1:03d}"]\n'

    async def main() -> None:
        run = Run(plan_of(tmp_path, manifests), FakeProcesses({"m000": crashes(1)}))
        await run.start()
        await run.settle(f"m{count - 1:03d}", "blocked")
        assert sum(1 for s in run.states().values() if s == "blocked") == count - 1
        await run.finish()

    asyncio.run(main())


def test_reload_adds_removes_and_restarts_what_changed(tmp_path: Path) -> None:
    """Unchanged modules keep their process; changed ones get a new one."""
    folder = tmp_path / "plan"

    async def main() -> None:
        processes = FakeProcesses({"broken": crashes(1)})
        first = plan_of(
            tmp_path,
            {
                "keep": "",
                "change": "",
                "gone": "",
                "broken": 'restart = { policy = "never" }\n',
            },
        )
        run = Run(first, processes)
        await run.start()
        await run.until(lambda: run.state("broken") == "failed")
        await run.settle("change", "ready")
        (folder / "change.toml").write_text('exec = "sleep 2000"\n')
        (folder / "broken.toml").write_text('exec = "sleep 1000"\n')
        processes.behaviours.pop("broken")
        (folder / "gone.toml").unlink()
        (folder / "new.toml").write_text('exec = "sleep 1000"\nrequires = ["keep"]\n')
        changes = run.orchestrator.reload(compile_plan(folder))
        assert changes == {
            "added": ["new"],
            "removed": ["gone"],
            "changed": ["broken", "change"],
        }
        await run.until(
            lambda: (
                "gone" not in run.orchestrator.units
                and run.state("new") == "ready"
                and run.state("broken") == "ready"
                and len(processes.of("change")) == 2
                and run.state("change") == "ready"
            )
        )
        assert len(processes.of("keep")) == 1
        assert processes.of("change")[1].argv == ["sleep", "2000"]
        assert processes.of("gone")[0].signals[0][1] == signal.SIGTERM
        kinds = [e["type"] for e in run.events]
        assert {"added", "removed", "reload"} <= set(kinds)
        await run.finish()

    asyncio.run(main())


@scenario({"root": "critical = true\n" + FAST_RESTART}, {"root": crashes(1)})
async def test_resume_leaves_rescue_for_degraded(run: Run) -> None:
    await run.until(lambda: run.orchestrator.system == "rescue")
    run.orchestrator.resume()
    await run.until(lambda: run.orchestrator.system == "degraded")
    assert run.orchestrator.rescue is None


@scenario({"steady": FAST_RESTART})
async def test_a_module_that_ran_a_while_is_restarted_at_once(run: Run) -> None:
    """Backoff is for modules that die young: after a second up, no delay."""
    await run.settle("steady", "ready")
    await asyncio.sleep(1.05)
    run.processes.of("steady")[0].exit(1)
    await run.until(lambda: len(run.processes.of("steady")) == 2)
    restarting = [
        e for e in run.events if e["type"] == "state" and e["new"] == "restarting"
    ]
    assert restarting[0]["delay"] == 0.0
    assert restarting[0]["reason"] == "exited 1; restart 1 in 0.00s"
    # The second death comes at once: that one backs off again.
    await run.settle("steady", "ready")
    run.processes.of("steady")[1].exit(1)
    await run.until(lambda: len(run.processes.of("steady")) == 3)
    delays = [e["delay"] for e in run.events if e.get("new") == "restarting"]
    assert delays == [0.0, 0.02]
