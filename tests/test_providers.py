"""Providers, sidecars, system failover, the log router and the what-if,
without processes."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from partenza.fallback import FallbackLogger, LogRouter
from partenza.logs import LogLine
from partenza.orchestrator import Orchestrator
from partenza.plan import compile_plan
from partenza.whatif import describe, what_if
from tests.conftest import DEMO, write_plan
from tests.fakes import FakeProcesses, crashes
from tests.test_state_machine import FAST_RESTART, Run, plan_of, scenario

SIDECAR = "sidecar = true\n"


@scenario({"side": SIDECAR, "web": 'sidecars = ["side"]\n'})
async def test_a_sidecar_is_ready_first_and_stops_last(run: Run) -> None:
    await run.until(lambda: run.state("web") == "ready")
    seq = {
        (e["module"], e["new"]): e["seq"] for e in run.events if e["type"] == "state"
    }
    assert seq[("side", "ready")] < seq[("web", "initializing")]
    await run.finish()
    side, web = run.processes.of("side")[0], run.processes.of("web")[0]
    assert web.signals[0][0] < side.signals[0][0]


@scenario({"side": SIDECAR + FAST_RESTART, "web": 'sidecars = ["side"]\n'})
async def test_a_crashing_loose_sidecar_does_not_bounce_its_target(run: Run) -> None:
    await run.until(lambda: run.state("web") == "ready")
    run.processes.of("side")[0].exit(1)
    await run.until(
        lambda: len(run.processes.of("side")) == 2 and run.state("side") == "ready"
    )
    assert len(run.processes.of("web")) == 1
    assert run.processes.of("web")[0].signals == []


@scenario(
    {
        "side": SIDECAR + 'binding = "tight"\n' + FAST_RESTART,
        "web": 'sidecars = ["side"]\n',
    }
)
async def test_a_tight_sidecar_takes_its_target_along(run: Run) -> None:
    await run.until(lambda: run.state("web") == "ready")
    run.processes.of("side")[0].exit(1)
    await run.until(
        lambda: len(run.processes.of("web")) == 2 and run.state("web") == "ready"
    )
    assert run.orchestrator.units["web"].reason != ""
    stopping = [
        e for e in run.events if e.get("module") == "web" and e.get("new") == "stopping"
    ]
    assert stopping[0]["reason"].startswith("its sidecar side ended")


@scenario({"side": SIDECAR, "job": 'sidecars = ["side"]\n'}, {"job": crashes(0)})
async def test_a_finished_target_ends_its_sidecars(run: Run) -> None:
    await run.until(lambda: run.state("side") == "stopped")
    assert run.orchestrator.units["job"].reason == "exited 0; finished"
    assert run.orchestrator.units["side"].reason.startswith("its target job is stopped")


@scenario({"side": SIDECAR, "web": 'sidecars = ["side"]\n' + FAST_RESTART})
async def test_a_sidecar_restarts_with_its_target(run: Run) -> None:
    await run.until(lambda: run.state("web") == "ready")
    run.processes.of("web")[0].exit(1)
    await run.until(
        lambda: len(run.processes.of("web")) == 2 and run.state("web") == "ready"
    )
    assert len(run.processes.of("side")) == 2
    second_side = run.processes.of("side")[1].spawned_at
    assert second_side < run.processes.of("web")[1].spawned_at


@scenario(
    {
        "primary": 'provides = ["db"]\npriority = 5\non_failure = "failover"\n'
        + FAST_RESTART,
        "backup": 'provides = ["db"]\n',
        "api": 'requires = ["db"]\n',
    }
)
async def test_failover_restarts_running_dependents_on_the_new_provider(
    run: Run,
) -> None:
    await run.until(lambda: run.state("api") == "ready")
    assert run.state("backup") == "inactive"
    run.processes.behaviours["primary"] = crashes(1)
    run.processes.of("primary")[0].exit(1)
    await run.until(
        lambda: len(run.processes.of("api")) == 2 and run.state("api") == "ready"
    )
    failover = next(e for e in run.events if e["type"] == "failover")
    assert failover["dependents"] == ["api"]
    api_stop = next(
        e for e in run.events if e.get("module") == "api" and e.get("new") == "stopping"
    )
    assert api_stop["reason"].startswith("db moved from primary to backup")
    backup_ready = next(
        e["seq"]
        for e in run.events
        if e.get("module") == "backup" and e.get("new") == "ready"
    )
    api_again = [
        e["seq"]
        for e in run.events
        if e.get("module") == "api" and e.get("new") == "initializing"
    ][-1]
    assert backup_ready < api_again, "api waits for the new provider"


@scenario(
    {
        "primary": 'provides = ["db"]\non_failure = "failover"\n' + FAST_RESTART,
        "backup": 'provides = ["db"]\non_failure = "failover"\n' + FAST_RESTART,
        "api": 'requires = ["db"]\n',
    },
    {"primary": crashes(1), "backup": crashes(1)},
)
async def test_with_no_provider_left_dependents_are_blocked_saying_so(run: Run) -> None:
    await run.settle("api", "blocked")
    assert run.orchestrator.units["api"].reason == (
        "requires db: no provider left (backup, primary failed)"
    )


def test_a_fallback_failure_boots_the_fallback_plan(tmp_path: Path) -> None:
    fallback = compile_plan(
        write_plan(tmp_path / "minimal", {"console": 'exec = "sleep 1000"\n'})
    )
    main = write_plan(
        tmp_path / "main",
        {
            "db": 'exec = "sleep 1000"\ncritical = true\non_failure = "fallback"\n'
            + FAST_RESTART,
            "api": 'exec = "sleep 1000"\nrequires = ["db"]\n',
            "other": 'exec = "sleep 1000"\n',
        },
    )
    (main / "plan.toml").write_text('fallback = "../minimal"\n')
    plan = compile_plan(main)
    assert plan.fallback == str((tmp_path / "minimal").resolve())

    async def body() -> None:
        processes = FakeProcesses()
        orchestrator = Orchestrator(
            plan,
            state_dir=None,
            processes=processes,
            fallback=fallback,  # type: ignore[arg-type]
        )
        events: list[dict] = []
        orchestrator.bus.subscribe(events.append)
        task = asyncio.create_task(orchestrator.run())
        deadline = time.monotonic() + 5
        while not (
            "api" in orchestrator.units and orchestrator.units["api"].state == "ready"
        ):
            await asyncio.sleep(0.005)
        processes.behaviours["db"] = crashes(1)
        processes.of("db")[0].exit(1)
        while orchestrator.plan.name != "minimal" or orchestrator.system != "running":
            assert time.monotonic() < deadline, orchestrator.system_record()
            await asyncio.sleep(0.005)
        record = orchestrator.system_record()
        assert record["plan"] == "minimal" and record["fallback_of"] == "main"
        assert record["fallback_reason"].startswith("db failed: exited 1")
        for name in ("api", "other"):
            assert processes.of(name)[0].signals[0][1] == signal.SIGTERM
            assert not processes.of(name)[0].running
        assert list(orchestrator.units) == ["console"]
        kinds = [e["type"] for e in events]
        assert kinds.index("fallback") < kinds.index("plan")
        orchestrator.shutdown("test over")
        await asyncio.wait_for(task, 5)

    asyncio.run(body())


class _Session:
    """A logger connection: what was posted, and how much sits unread."""

    def __init__(self) -> None:
        self.posted: list[dict] = []
        self.backlog = 0

    def post(self, message: dict) -> None:
        self.posted.append(message)


def _line(text: str) -> LogLine:
    return LogLine(time.time(), "out", text)


def test_the_router_falls_back_while_the_logger_is_away_and_replays(
    tmp_path: Path,
) -> None:
    shown: list[tuple[str, str]] = []
    fallback = FallbackLogger(
        tmp_path / "fallback.log", lambda t, x: shown.append((t, x))
    )
    router = LogRouter(fallback, limit=1000)
    router.line("app", _line("before"))
    logger = _Session()
    router.attach(logger, "logger")
    assert logger.posted[0] == {"type": "backlog", "lines": 1, "dropped": 0}
    assert logger.posted[1]["text"] == "before"
    router.line("app", _line("during"))
    router.line("logger", _line("its own output"))
    router.ack(logger.posted[-1]["seq"])
    assert list(router.backlog) == []
    router.line("app", _line("unacked"))
    router.detach(logger)
    router.line("app", _line("away"))
    fallback.flush()
    kept = (tmp_path / "fallback.log").read_text()
    assert [line.split(" ", 3)[3] for line in kept.splitlines()] == [
        "before",
        "unacked",
        "away",
    ]
    again = _Session()
    router.attach(again, "logger")
    assert [m["text"] for m in again.posted[1:]] == ["unacked", "away"]
    assert ("log", "app| away") in shown


def test_the_router_bounds_its_backlog_and_counts_what_it_dropped(
    tmp_path: Path,
) -> None:
    fallback = FallbackLogger(tmp_path / "fallback.log", None)
    router = LogRouter(fallback, limit=10)
    for number in range(25):
        router.line("app", _line(f"line {number}"))
    logger = _Session()
    router.attach(logger, "logger")
    assert logger.posted[0] == {"type": "backlog", "lines": 10, "dropped": 15}
    assert [m["text"] for m in logger.posted[1:]] == [
        f"line {n}" for n in range(15, 25)
    ]
    fallback.flush()
    assert len((tmp_path / "fallback.log").read_text().splitlines()) == 25


def test_a_logger_that_does_not_read_counts_as_refusing(tmp_path: Path) -> None:
    fallback = FallbackLogger(tmp_path / "fallback.log", None)
    router = LogRouter(fallback, limit=100)
    logger = _Session()
    router.attach(logger, "logger")
    logger.backlog = 10**9
    router.line("app", _line("refused"))
    assert [m.get("text") for m in logger.posted] == [None]
    logger.backlog = 0
    router.line("app", _line("taken"))
    assert [m["text"] for m in logger.posted[1:]] == ["refused", "taken"]
    fallback.flush()
    assert "refused" in (tmp_path / "fallback.log").read_text()


def test_what_if_on_the_demo_plan() -> None:
    plan = compile_plan(DEMO)
    lines = describe(plan, what_if(plan, "web"))
    assert lines == [
        "what if web fails for good (its restarts spent)?",
        "  web: on_failure = degrade",
        "  blocked: worker (requires web, which failed)",
        "  carries on: chatty (after web)",
        "  then the system goes on degraded",
    ]


def test_what_if_follows_failover_blocking_and_sidecars(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {
            "primary": 'provides = ["db"]\npriority = 5\non_failure = "failover"\n',
            "backup": 'provides = ["db"]\n',
            "api": 'requires = ["db"]\nsidecars = ["proxy"]\n',
            "proxy": "sidecar = true\n",
            "web": 'requires = ["api"]\n',
            "root": 'critical = true\nrequires = ["backup"]\n',
        },
    )
    failover = what_if(plan, "primary")
    assert [(f.capability, f.to, f.restarted) for f in failover.failovers] == [
        ("db", "backup", ["api"])
    ]
    assert failover.blocked == {} and failover.ending == "degraded"
    both = what_if(plan, "backup")
    assert both.blocked == {"root": "requires backup, which failed"}
    rooted = what_if(plan, "root")
    assert rooted.ending == "rescue" and rooted.strategy == "bluescreen"
    chain = what_if(plan, "proxy")
    assert chain.blocked == {
        "api": "requires proxy, which failed",
        "web": "requires api, which is blocked",
    }
    text = describe(plan, rooted)
    assert (
        text[-1] == "  then the system enters rescue: the bluescreen takes the console"
    )
