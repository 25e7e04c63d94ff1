"""`partenza top` driven headless from recorded streams: each action, and snapshots.

No orchestrator runs here: a `Recording` plays a `subscribe` stream (a
snapshot, then events) into the app, answers its requests and writes down
what it was asked. The clock is fixed and the CPU and memory figures are
canned, so the pictures in `snapshots/` stay the same from run to run.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion
from textual.pilot import Pilot

from partenza.client import ClientError
from tui.app import TopApp
from tui.screens import ConfirmScreen, HelpScreen, TimelineScreen, WhyScreen

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
NOW = T0 + 133.0
"""The fixed clock: 2m13s after the boot started."""


# Top-level snapshots/: the SVG extension, told where to keep its files.


class _TopLevelSVG(SVGImageExtension):
    @classmethod
    def dirname(cls, *, test_location: Any) -> str:
        return str(ROOT / "snapshots" / test_location.basename)


class _TopLevelSnapshots(SnapshotAssertion):
    def use_extension(self, extension_class: Any = None) -> SnapshotAssertion:
        if extension_class is SVGImageExtension:
            extension_class = _TopLevelSVG
        return super().use_extension(extension_class)


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return _TopLevelSnapshots(
        update_snapshots=snapshot.update_snapshots,
        extension_class=snapshot.extension_class,
        test_location=snapshot.test_location,
        session=snapshot.session,
    )


@pytest.fixture(autouse=True)
def same_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A colour terminal in UTC, whatever the machine running the tests has."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLORTERM", raising=False)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# Recordings.


def record(name: str, **fields: Any) -> dict[str, Any]:
    """A module record as the snapshot has it; inactive unless told otherwise."""
    base: dict[str, Any] = {
        "name": name,
        "state": "inactive",
        "reason": "waiting to start",
        "since": T0,
        "pid": None,
        "target": "up",
        "standby": False,
        "restarts": 0,
        "last_exit": None,
        "started_at": None,
        "ready_at": None,
        "description": "",
        "file": f"demo/{name}.toml",
        "critical": False,
        "sidecar": False,
        "provides": [],
        "ready_check": "process started",
        "on_failure": "degrade",
        "deps": [],
        "blocked_by": None,
        "failure": None,
    }
    base.update(fields)
    return base


def system(plan: str, state: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {
        "state": state,
        "reason": reason,
        "plan": plan,
        "plan_dir": f"/srv/{plan}",
        "boot_started": T0,
        "boot_took": None,
        "pid": 1,
        "rescue": None,
        "counts": {},
        "providers": {},
        **fields,
    }


class Events:
    """Numbers and stamps events as the orchestrator's bus does."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.items: list[dict[str, Any]] = []

    def add(self, at: float, kind: str, **fields: Any) -> Events:
        self.seq += 1
        self.items.append({"seq": self.seq, "time": T0 + at, "type": kind, **fields})
        return self

    def state(
        self, at: float, module: str, old: str, new: str, reason: str, **fields: Any
    ) -> Events:
        fields.setdefault("pid", None)
        fields.setdefault("restarts", 0)
        return self.add(
            at, "state", module=module, old=old, new=new, reason=reason, **fields
        )


def demo_recording() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The demo plan, from the first snapshot of its boot to crashy's first crash."""
    snapshot = {
        "seq": 1,
        "boot": "demo-boot",
        "system": system(
            "demo", "starting", "booting plan demo", providers={"http": ["web"]}
        ),
        "modules": [
            record(
                "chatty",
                description="writes about twenty log lines a second",
                deps=[{"kind": "after", "via": "web", "module": "web"}],
            ),
            record("crashy", description="crashes every 8 to 20 seconds"),
            record("web", provides=["http"], ready_check="tcp 127.0.0.1:8421"),
            record(
                "worker",
                ready_check="log /fetched n=/",
                deps=[
                    {"kind": "requires", "via": "http", "module": "web"},
                    {"kind": "wants", "via": "cache", "module": None},
                ],
            ),
        ],
    }
    events = (
        Events(1)
        .state(0.008, "crashy", "inactive", "initializing", "pid 4101", pid=4101)
        .state(0.009, "web", "inactive", "initializing", "pid 4102", pid=4102)
        .state(0.015, "crashy", "initializing", "ready", "process started", pid=4101)
        .state(0.112, "web", "initializing", "ready", "tcp answered", pid=4102)
        .state(0.117, "worker", "inactive", "initializing", "pid 4103", pid=4103)
        .state(0.118, "chatty", "inactive", "initializing", "pid 4104", pid=4104)
        .state(0.119, "chatty", "initializing", "ready", "process started", pid=4104)
        .state(0.171, "worker", "initializing", "ready", "log line matched", pid=4103)
        .add(0.171, "boot", took=0.171, counts={"ready": 4})
        .add(
            0.172, "system", old="starting", new="running", reason="every module is up"
        )
        .state(
            14.2,
            "crashy",
            "ready",
            "restarting",
            "exited 1; restart 1 in 0.50s",
            exit="exited 1",
            restarts=1,
        )
        .state(
            14.7,
            "crashy",
            "restarting",
            "initializing",
            "pid 4105",
            pid=4105,
            restarts=1,
        )
        .state(
            14.71,
            "crashy",
            "initializing",
            "ready",
            "process started",
            pid=4105,
            restarts=1,
        )
    )
    return snapshot, events.items


def demo_logs() -> dict[str, list[dict[str, Any]]]:
    lines = [
        {
            "time": T0 + 0.118,
            "stream": "sys",
            "text": "started pid 4104: python -u bin/chatty.py",
        }
    ]
    for n in range(1, 40):
        stream = "err" if n % 10 == 0 else "out"
        text = f"chatty: line {n}: " + (
            "a warning on stderr" if n % 10 == 0 else "all is well"
        )
        lines.append({"time": T0 + 0.12 + n * 0.05, "stream": stream, "text": text})
    worker = [
        {
            "time": T0 + 0.17 + n * 2,
            "stream": "out",
            "text": f"worker: fetched n={n + 1}",
        }
        for n in range(10)
    ]
    return {"chatty": lines, "worker": worker}


def blocked_recording() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A plan whose db has failed for good; its events then block the api."""
    failure = {
        "stage": "running",
        "error": "exited 1 after 4 restarts; start limit spent (5 in 1m00s)",
        "time": T0 + 3.0,
        "restarts": 4,
        "exit": "exited 1",
        "file": "shop/db.toml",
        "blocks": ["api", "shop"],
        "logs": [
            "db: opening /var/lib/db",
            "db: cannot open data dir: Permission denied",
        ],
        "streams": ["out", "err"],
    }
    ready = {"state": "ready", "reason": "process started", "since": T0 + 0.1}
    snapshot = {
        "seq": 40,
        "boot": "shop-boot",
        "system": system(
            "shop",
            "degraded",
            "not running: db",
            boot_took=3.1,
            providers={"http": ["web", "nginx"]},
        ),
        "modules": [
            record(
                "api",
                **ready,
                pid=5001,
                started_at=T0 + 0.05,
                ready_at=T0 + 0.1,
                deps=[{"kind": "requires", "via": "db", "module": "db"}],
            ),
            record(
                "core",
                **ready,
                pid=5002,
                critical=True,
                on_failure="bluescreen",
                started_at=T0 + 0.01,
                ready_at=T0 + 0.02,
            ),
            record(
                "db",
                state="failed",
                reason=failure["error"],
                since=T0 + 3.0,
                restarts=4,
                last_exit="exited 1",
                started_at=T0 + 2.9,
                ready_at=T0 + 2.9,
                failure=failure,
            ),
            record(
                "front",
                **ready,
                pid=5004,
                started_at=T0 + 0.06,
                ready_at=T0 + 0.07,
                deps=[
                    {"kind": "sidecar", "via": "proxy", "module": "proxy"},
                    {"kind": "requires", "via": "http", "module": "web"},
                ],
            ),
            record("nginx", standby=True, reason="standby", provides=["http"]),
            record(
                "proxy",
                **ready,
                pid=5006,
                sidecar=True,
                started_at=T0 + 0.02,
                ready_at=T0 + 0.03,
            ),
            record(
                "shop",
                **ready,
                pid=5007,
                started_at=T0 + 0.08,
                ready_at=T0 + 0.09,
                deps=[{"kind": "requires", "via": "api", "module": "api"}],
            ),
            record(
                "web",
                **ready,
                pid=5008,
                provides=["http"],
                started_at=T0 + 0.02,
                ready_at=T0 + 0.04,
            ),
        ],
    }
    events = (
        Events(40)
        .state(
            3.01,
            "shop",
            "ready",
            "stopping",
            "requires api, which was asked to stop; sent SIGTERM",
            pid=5007,
        )
        .state(
            3.02,
            "api",
            "ready",
            "stopping",
            "requires db, which failed; sent SIGTERM",
            pid=5001,
        )
        .state(
            3.05,
            "api",
            "stopping",
            "blocked",
            "requires db, which failed",
            exit="killed by SIGTERM",
        )
        .state(
            3.06,
            "shop",
            "stopping",
            "blocked",
            "requires api, which is blocked",
            exit="killed by SIGTERM",
        )
        .add(
            3.07,
            "system",
            old="degraded",
            new="degraded",
            reason="not running: api, db, shop",
        )
    )
    return snapshot, events.items


USAGE = {
    "chatty": (1.5, 12_500_000),
    "crashy": (0.0, 11_200_000),
    "web": (0.3, 20_400_000),
    "worker": (0.1, 19_900_000),
    "api": (0.2, 30_100_000),
    "core": (0.0, 9_800_000),
    "front": (0.4, 15_000_000),
    "proxy": (0.1, 8_000_000),
    "shop": (0.0, 10_000_000),
}


def canned_usage(pids: dict[str, int]) -> dict[str, tuple[float | None, int]]:
    return {name: USAGE[name] for name in pids if name in USAGE}


class Recording:
    """A `Source` that plays a recorded stream and writes down requests."""

    def __init__(
        self,
        snapshot: dict[str, Any],
        events: list[dict[str, Any]],
        logs: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.events = events
        self.logs = logs or {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.subscriptions = 0
        self.again = asyncio.Event()
        """Set to let a second subscription begin."""
        self._live: asyncio.Queue[dict[str, Any] | None] | None = None
        self._log_live: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    @property
    def live(self) -> asyncio.Queue[dict[str, Any] | None]:
        if self._live is None:
            self._live = asyncio.Queue()
        return self._live

    def push(self, event: dict[str, Any] | None) -> None:
        """Send one more event; None hangs up."""
        self.live.put_nowait(event)

    def push_log(self, module: str, line: dict[str, Any]) -> None:
        self._log_live.setdefault(module, asyncio.Queue()).put_nowait(line)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        self.subscriptions += 1
        if self.subscriptions > 1:
            await self.again.wait()
        yield copy.deepcopy(self.snapshot)
        for event in self.events:
            yield dict(event)
        while True:
            event = await self.live.get()
            if event is None:
                raise ClientError("the orchestrator closed the connection")
            yield event

    async def follow_logs(
        self, module: str, lines: int
    ) -> AsyncIterator[dict[str, Any]]:
        yield {"module": module, "lines": self.logs.get(module, [])[-lines:]}
        queue = self._log_live.setdefault(module, asyncio.Queue())
        while True:
            yield await queue.get()

    async def request(self, op: str, **params: Any) -> dict[str, Any]:
        self.requests.append((op, params))
        name = params.get("module")
        found = next((m for m in self.snapshot["modules"] if m["name"] == name), None)
        if found is None:
            raise ClientError(f"unknown module {name!r}")
        if op == "status":
            return {"system": self.snapshot["system"], "module": found}
        state = "stopped" if op == "stop" else "ready"
        return {
            "module": {**found, "state": state, "reason": f"{op} done"},
            "settled": True,
        }


def make_app(recording: Recording) -> TopApp:
    return TopApp(recording, clock=lambda: NOW, sample=canned_usage, sample_every=0.05)


def demo_app() -> tuple[TopApp, Recording]:
    snapshot, events = demo_recording()
    recording = Recording(snapshot, events, demo_logs())
    return make_app(recording), recording


def blocked_app() -> tuple[TopApp, Recording]:
    snapshot, events = blocked_recording()
    recording = Recording(snapshot, events)
    return make_app(recording), recording


async def settle(pilot: Pilot[Any], logs_of: str | None = None) -> None:
    """Wait until every recorded event, sample and log line is on screen."""
    app = pilot.app
    assert isinstance(app, TopApp)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        await pilot.pause(0.02)
        modules = app.model.modules.values()
        sampled = all(m.cpu is not None for m in modules if m.pid)
        view = app.logs.view
        logs = logs_of is None or (
            app.logs.module == logs_of
            and app.logs.written
            and view.scroll_offset.y == view.max_scroll_y
        )
        if app.drawn and app.model.seq and sampled and logs:
            break
    else:
        raise AssertionError("the app did not settle in 10s")
    await pilot.pause()


async def until(
    pilot: Pilot[Any], check: Callable[[], object], what: str, timeout: float = 3.0
) -> None:
    """Wait until `check()` holds, however loaded the machine is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.02)
    if pilot.app.is_running:
        await pilot.pause()


def row_text(app: TopApp, name: str) -> str:
    """The table's line for one module, as drawn."""
    table = app.table
    index = table.rows.index(name)
    return table.render_line(index + 1 - round(table.scroll_offset.y)).text


def bar_text(app: TopApp) -> str:
    content = app.system_bar.content
    return getattr(content, "plain", str(content))


# Actions.


def pilot_test(body: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test in an event loop of its own."""

    @functools.wraps(body)
    def test() -> None:
        asyncio.run(body())

    return test


@pilot_test
async def test_events_reach_the_table_and_the_bar() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, logs_of="chatty")
        assert app.model.seq == 14
        assert app.table.rows == ["chatty", "crashy", "web", "worker"]
        crashy = row_text(app, "crashy")
        assert crashy.split()[:5] == ["crashy", "+", "ready", "ok", "4105"]
        assert "exit 1" in crashy
        assert "RUNNING" in bar_text(app) and "4 ready" in bar_text(app)
        assert app.logs.view.lines[-1].endswith("chatty: line 39: all is well")


@pilot_test
async def test_restart_asks_the_orchestrator_and_shows_the_outcome() -> None:
    app, recording = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("down")
        assert app.selected == "crashy"
        await pilot.press("r")
        await until(pilot, lambda: recording.requests, "the restart request")
        assert recording.requests == [("restart", {"module": "crashy"})]
        recording.push(
            {
                "seq": 15,
                "time": T0 + 130,
                "type": "state",
                "module": "crashy",
                "old": "ready",
                "new": "stopping",
                "reason": "restart requested",
                "pid": 4105,
                "restarts": 2,
            }
        )
        await until(pilot, lambda: app.model.seq == 15 and app.drawn, "event 15")
        line = row_text(app, "crashy")
        assert line.split()[1:3] == ["v", "stopping"]
        assert line.split()[6] == "2"


@pilot_test
async def test_stop_of_a_critical_module_asks_first() -> None:
    app, recording = blocked_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("down")
        assert app.selected == "core"
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert recording.requests == []
        await pilot.press("s", "y")
        await until(pilot, lambda: recording.requests, "the stop request")
        assert recording.requests == [("stop", {"module": "core"})]


@pilot_test
async def test_start_of_a_failed_module_needs_no_confirmation() -> None:
    app, recording = blocked_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down")
        assert app.selected == "db"
        await pilot.press("u")
        await until(pilot, lambda: recording.requests, "the start request")
        assert recording.requests == [("start", {"module": "db"})]
        assert not isinstance(app.screen, ConfirmScreen)


@pilot_test
async def test_filter_by_name_then_clear_it() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        table = app.table
        await pilot.press("slash", "w", "o")
        assert table.rows == ["worker"]
        assert tree_modules(app) == ["worker"], "the tree is filtered too"
        await pilot.press("enter")
        assert table.has_focus and table.rows == ["worker"]
        assert app.selected == "worker"
        await pilot.press("slash", "escape")
        assert table.rows == ["chatty", "crashy", "web", "worker"]
        assert tree_modules(app) == ["chatty", "crashy", "worker", "    web"]
        # A match deep in the tree keeps what leads to it.
        await pilot.press("slash", "w", "e")
        assert table.rows == ["web"]
        assert tree_modules(app) == ["worker", "    web"]


def tree_modules(app: TopApp) -> list[str]:
    """The modules in the dependency tree, indented by depth."""
    found: list[str] = []

    def walk(node: Any, depth: int) -> None:
        for child in node.children:
            item = child.data
            if item is not None and item.kind == "module":
                found.append("  " * depth + item.name)
            walk(child, depth + 1)

    walk(app.dep_tree.root, 0)
    return found


@pilot_test
async def test_filter_by_state_cycles() -> None:
    app, _ = blocked_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        table = app.table
        await pilot.press("v")
        assert table.state_filter == "trouble"
        assert table.rows == ["api", "db", "shop"]
        await pilot.press("v")
        assert table.state_filter == "inactive"
        assert table.rows == ["nginx"]


@pilot_test
async def test_sort_by_state_puts_trouble_first() -> None:
    app, _ = blocked_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        table = app.table
        await pilot.press("o")
        assert table.sort_column == "state"
        assert table.rows[:3] == ["db", "api", "shop"]
        await pilot.press("R")
        assert table.rows[-3:] == ["api", "shop", "db"]


@pilot_test
async def test_follow_toggle_holds_lines_while_paused() -> None:
    app, recording = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, logs_of="chatty")
        pane = app.logs
        shown = len(pane.view.lines)
        await pilot.press("f")
        assert not pane.following
        recording.push_log("chatty", {"time": T0 + 9, "stream": "out", "text": "held"})
        title = pane.query_one("#log-title")
        await until(pilot, lambda: "1 new" in title.content.plain, "the held line")
        assert "PAUSED" in title.content.plain
        assert len(pane.view.lines) == shown
        await pilot.press("f")
        await until(pilot, lambda: pane.view.lines[-1].endswith("held"), "the line")
        assert pane.following
        assert len(pane.view.lines) == shown + 1


@pilot_test
async def test_a_pause_does_not_blank_the_next_module_shown() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, logs_of="chatty")
        pane = app.logs
        await pilot.press("f")
        assert not pane.following
        app.table.select("worker")
        await until(pilot, lambda: pane.module == "worker", "worker's log")
        await until(pilot, lambda: len(pane.view.lines) > 0, "worker's lines")
        assert pane.following, "a new module is followed from its end"


@pilot_test
async def test_log_search_finds_lines_and_pauses() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, logs_of="chatty")
        pane = app.logs
        pane.view.focus()
        await pilot.press("slash", *"warning", "enter")
        await pilot.pause()
        assert not pane.following
        assert pane.matches == 3 and pane.match == 2
        assert "search 'warning': 3/3" in pane.query_one("#log-title").content.plain
        await pilot.press("n")
        assert pane.match == 0
        await pilot.press("N")
        assert pane.match == 2


@pilot_test
async def test_copy_puts_the_shown_lines_on_the_clipboard() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, logs_of="chatty")
        await pilot.press("c")
        assert app.clipboard.splitlines()[-1].endswith("chatty: line 39: all is well")


@pilot_test
async def test_why_view_shows_the_chain_and_acts_on_the_cause() -> None:
    app, recording = blocked_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("end", "up")
        assert app.selected == "shop"
        await pilot.press("w")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WhyScreen)
        body = screen.query_one("#why-body").content.plain
        assert "shop blocked: requires api, which is blocked" in body
        assert "api blocked: requires db, which failed" in body
        assert "db failed: exited 1 after 4 restarts" in body
        assert "Permission denied" in body
        await pilot.press("r")
        await until(pilot, lambda: recording.requests, "the restart request")
        assert recording.requests == [("restart", {"module": "db"})]

        # Events keep the open view, and the screen under it, current.
        recording.push(
            {
                "seq": 46,
                "time": NOW,
                "type": "state",
                "module": "db",
                "old": "failed",
                "new": "initializing",
                "reason": "pid 5003, waiting for process started",
                "pid": 5003,
                "restarts": 5,
            }
        )

        def body_text() -> str:
            return screen.query_one("#why-body").content.plain

        await until(pilot, lambda: "db initializing" in body_text(), "the new state")
        assert "db failed" not in body_text()
        assert row_text(app, "db").split()[1:3] == ["~", "initializing"]
        await pilot.press("escape")
        assert not isinstance(app.screen, WhyScreen)


@pilot_test
async def test_timeline_lists_modules_in_start_order() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, TimelineScreen)
        view = app.screen.query_one("TimelineView")
        names = [bar.module for bar in view.bars]
        assert names == ["crashy", "web", "worker", "chatty"]
        web = view.render_line(2).text
        assert web.startswith("web") and "#" in web and "+9ms ready in 103ms" in web
        await pilot.press("escape")
        assert not isinstance(app.screen, TimelineScreen)


@pilot_test
async def test_help_opens_and_closes() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@pilot_test
async def test_quit_ends_with_zero() -> None:
    app, _ = demo_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("q")
    assert app.return_value == 0


@pilot_test
async def test_gap_in_events_says_so_and_subscribes_again() -> None:
    app, recording = demo_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        recording.push({"seq": 17, "time": NOW, "type": "boot", "took": 1.0})
        await until(pilot, lambda: recording.subscriptions == 2, "a new subscription")
        assert "DISCONNECTED" in bar_text(app)
        assert "missed events (expected event 15, got 17)" in bar_text(app)
        recording.again.set()
        await until(pilot, lambda: app.link.state == "connected", "the new snapshot")
        await settle(pilot)
        assert "RUNNING" in bar_text(app)
        await until(pilot, lambda: app.system_bar.size.height == 2, "two lines again")


class Unreachable(Recording):
    """A source whose orchestrator never answers."""

    PROBLEM = (
        "cannot connect to /run/user/0/partenza/control.sock: no such file "
        "(is an orchestrator running? PARTENZA_RUNTIME_DIR names its folder)"
    )

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        self.subscriptions += 1
        raise ClientError(self.PROBLEM)
        yield {}


@pilot_test
async def test_without_an_orchestrator_the_whole_problem_is_shown() -> None:
    snapshot, events = demo_recording()
    app = make_app(Unreachable(snapshot, events))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link.state == "lost", "the lost link")
        bar = app.system_bar
        # At 80 columns the hint wraps onto more lines instead of being cut.
        await until(pilot, lambda: bar.size.height > 2, "the bar to grow")
        assert Unreachable.PROBLEM in bar_text(app)
        await pilot.press("t")
        await until(
            pilot, lambda: isinstance(app.screen, TimelineScreen), "the timeline"
        )
        title = app.screen.query_one("#timeline-title").render()
        assert str(title) == "boot timeline: waiting for the orchestrator"


@pilot_test
async def test_bluescreen_in_console_mode_leaves_the_console() -> None:
    app, recording = blocked_app()
    app.console_mode = True
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        recording.push(
            {
                "seq": 46,
                "time": NOW,
                "type": "bluescreen",
                "module": "core",
                "error": "exited 2",
                "stage": "running",
            }
        )
        await until(pilot, lambda: app.return_value is not None, "the app to leave")
    assert app.return_value == 0


@pilot_test
async def test_tree_follows_the_width_and_the_key() -> None:
    app, _ = blocked_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        tree, table = app.dep_tree, app.table
        assert not tree.display and table.display
        await pilot.press("d")
        assert tree.display and tree.has_focus
        await pilot.press("d")
        assert not tree.display and table.has_focus
        # Made wide, the tree comes back beside the table; d hides it.
        app.tree_shown = None
        await pilot.resize_terminal(140, 40)
        await until(pilot, lambda: tree.display, "the tree at 140 columns")
        assert table.display
        await pilot.press("d")
        assert not tree.display


# Snapshots: each docstring says what the picture must show.


def test_snapshot_demo_running(snap_compare: Any) -> None:
    """The demo plan running, at 120x36.

    The bar: `demo  RUNNING  up 2m13s  4 modules: 4 ready`, booted in 171ms.
    The tree: chatty, crashy and worker at the top; under worker the `[http]`
    capability with web, and `cache (absent)`. The table: four ready modules
    with pids 4104, 4105, 4102, 4103; crashy with 1 restart and `exit 1`;
    CPU and RSS filled in; chatty selected. The log pane follows chatty, every
    tenth line a stderr warning in another colour.
    """
    app, _ = demo_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot, logs_of="chatty")

    assert snap_compare(app, terminal_size=(120, 36), run_before=run_before)


def test_snapshot_80x24_console(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocked plan at 80x24 on TERM=linux with NO_COLOR, as a console shows it.

    No colour at all: the states read from their glyphs (`X failed`,
    `# blocked`, `+ ready`, `. inactive`); core marked critical with `*`.
    The tree is hidden at this width; every column but the reason fits. The
    bar says DEGRADED and `not running: api, db, shop`. The footer lists the
    keys and `^p palette`, with no character a Linux console lacks.
    """
    monkeypatch.setenv("TERM", "linux")
    monkeypatch.setenv("NO_COLOR", "1")
    app, _ = blocked_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_snapshot_why_blocked_chain(snap_compare: Any) -> None:
    """The why view of shop, at 100x30: a blocked chain down to its root cause.

    `# shop blocked: requires api, which is blocked`, under it `<- # api
    blocked: requires db, which failed`, under that `<- X db failed: exited 1
    after 4 restarts; start limit spent (5 in 1m00s)` with its stage, last
    exit, restarts, manifest, what it holds back and its last two log lines
    (`| db: opening`, then `! db: cannot open` from stderr), then `root cause:
    db failed`.
    """
    app, _ = blocked_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("end", "up", "w")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_snapshot_timeline(snap_compare: Any) -> None:
    """The demo's boot timeline, at 100x30.

    Scale 0s to 171ms. crashy first: started at +8ms, ready in 7ms, a short
    bar at the left; web from +9ms, ready in 103ms, a long bar; worker from
    +117ms to the end of the scale; chatty a one-cell bar at +118ms. The
    legend explains `#`, `=` and `>`.
    """
    app, _ = demo_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("t")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)
