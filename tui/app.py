"""`partenza top`: watch a boot and steer a live system.

The app subscribes once to the orchestrator's event stream and keeps a `Model`
current from it; it never asks for the whole state again. When the stream
breaks, or an event is missing, it says so in the system bar and subscribes
afresh, with backoff, from a new snapshot. CPU and memory figures are read in
a worker thread. Redraws are batched: however many events come, the screen is
drawn at most every `REDRAW_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import signal
import sys
import termios
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, Tree

from partenza.client import ClientError
from tui.model import STATE_FILTERS, Change, Model, Resync, SequenceGap, TreeItem
from tui.sampler import SampleFunction, Sampler, Usage
from tui.screens import ConfirmScreen, HelpScreen, TimelineScreen, WhyScreen
from tui.source import SocketSource, Source
from tui.style import (
    ascii_lines,
    has_clipboard_escape,
    keeps_no_screen,
    plain_ascii_terminal,
    small_terminal,
    whole_cell_scrollbars,
)
from tui.widgets import (
    DependencyTree,
    Link,
    LogPane,
    LogView,
    ModuleTable,
    SearchInput,
    SystemBar,
)

log = logging.getLogger(__name__)

REDRAW_EVERY = 0.05
"""Seconds between redraws while events arrive."""
SAMPLE_EVERY = 2.0
"""Seconds between looks at CPU and memory."""
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
"""Reconnection backoff: the first wait, doubled up to this many seconds."""
FOLLOW_DELAY = 0.15
"""Seconds the cursor must rest on a module before its log is followed."""
LOG_BACKLOG = 200
"""Lines of a module's past output shown when its log pane opens."""
WIDE = 100
"""From this many columns the tree and the table are shown side by side."""


class _MainRow(Horizontal):
    """The tree beside the table: arranged again whenever its size changes
    (the app itself hears of a resize before the layout has its new size)."""

    def __init__(self, arrange: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._arrange = arrange

    def on_resize(self) -> None:
        self._arrange()


class TopApp(App[int]):
    """The full-screen view of one orchestrator."""

    TITLE = "partenza top"
    CSS = """
    Screen {
        layout: vertical;
    }
    #main {
        height: 1fr;
    }
    #modules {
        width: 1fr;
    }
    #filters {
        height: 1;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: clip;
        background: $panel;
        display: none;
    }
    #filters.-shown {
        display: block;
    }
    #filter {
        display: none;
    }
    #filter.-shown {
        display: block;
    }
    SearchIcon {
        display: none;
    }
    Footer FooterKey.-command-palette {
        border-left: none;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "control('restart')", "Restart"),
        Binding("s", "control('stop')", "Stop"),
        Binding("u", "control('start')", "Start"),
        Binding("w", "why", "Why"),
        Binding("t", "timeline", "Timeline"),
        Binding("f", "follow", "Follow", show=False),
        Binding("d", "tree", "Tree", show=False),
        Binding("c", "copy", "Copy", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        source: Source,
        *,
        clock: Callable[[], float] = time.time,
        sample: SampleFunction | None = None,
        sample_every: float = SAMPLE_EVERY,
        console_mode: bool = False,
        copy_path: Path | None = None,
        standalone: bool = False,
        where: str = "the control socket",
    ) -> None:
        plain = small_terminal() or "NO_COLOR" in os.environ
        super().__init__(ansi_color=True if plain else None)
        if small_terminal():
            self.set_reactive(App.theme, "ansi-dark")
        self.source = source
        self.clock = clock
        self.sample = sample
        self.sample_every = sample_every
        self.console_mode = console_mode
        """The app holds the console: it leaves when the bluescreen takes it."""
        self.copy_path = copy_path
        self.standalone = standalone
        """The app owns its process: it handles SIGTERM and SIGHUP, and tunes
        the garbage collector."""
        self.model = Model()
        self.link = Link("connecting", f"connecting to {where}")
        self.selected: str | None = None
        self.tree_shown: bool | None = None
        """Whether the tree is shown; None lets the width decide."""
        self._pending = Change()
        self._redraw_due = False
        self._sampling = False
        self._sample_failed = False
        self._was_connected = False

        # The main screen's widgets, held here: whatever screen is on top,
        # events keep them current.
        self._bar = SystemBar(id="system")
        self._tree = DependencyTree(self.model, id="tree")
        self._modules = Vertical(id="modules")
        self._table = ModuleTable(self.model, self.clock, id="table")
        self._filter_bar = Static(id="filters")
        self._name_field = SearchInput(placeholder="filter by name", id="filter")
        self._logs = LogPane(self.model, id="logs")

    def compose(self) -> ComposeResult:
        yield self._bar
        with _MainRow(self._arrange, id="main"):
            yield self._tree
            with self._modules:
                yield self._table
                yield self._filter_bar
                yield self._name_field
        yield self._logs
        yield Footer(compact=True)

    @property
    def drawn(self) -> bool:
        """Whether the screen shows everything the model knows."""
        return self.model.loaded and not self._redraw_due

    @property
    def system_bar(self) -> SystemBar:
        return self._bar

    @property
    def table(self) -> ModuleTable:
        return self._table

    @property
    def dep_tree(self) -> DependencyTree:
        return self._tree

    @property
    def logs(self) -> LogPane:
        return self._logs

    def on_mount(self) -> None:
        if self.standalone:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, self._signalled, signum)
        self.set_interval(1.0, self._tick)
        if self.sample is not None:
            self.set_interval(self.sample_every, self._sample)
        self.install_screen(TimelineScreen(self.model, self.clock), name="timeline")
        self.install_screen(HelpScreen(), name="help")
        self.table.focus()
        self._arrange()
        self._draw_bar()
        # Subscribe once the first frame is drawn and every widget is there.
        self.call_after_refresh(self._stream)

    def on_unmount(self) -> None:
        if self.standalone:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    def _signalled(self, signum: int) -> None:
        log.info(
            "top: %s: restoring the terminal and exiting", signal.Signals(signum).name
        )
        self.exit(0)

    # The event stream.

    @work(exclusive=True, group="stream")
    async def _stream(self) -> None:
        delay = RETRY_FIRST
        while True:
            self._was_connected = False
            problem = await self._subscription()
            if self._was_connected:
                delay = RETRY_FIRST
            self._lost(problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _subscription(self) -> str:
        """Follow one subscription until it ends; why it ended."""
        try:
            stream = self.source.subscribe()
            try:
                snapshot = await anext(stream)
                self._loaded(snapshot)
                async for event in stream:
                    change = self.model.apply(event)
                    if change.bluescreen is not None:
                        self._bluescreen(change.bluescreen)
                    self._changed(change)
            finally:
                await stream.aclose()
        except SequenceGap as gap:
            return f"missed events ({gap}); subscribing again"
        except Resync as change:
            return f"{change}; subscribing again"
        except StopAsyncIteration:
            return "the orchestrator sent no snapshot"
        except ClientError as exc:
            return exc.message
        except (OSError, ValueError) as exc:
            return f"the connection broke: {exc}"
        return "the orchestrator closed the connection"

    def _loaded(self, snapshot: dict[str, Any]) -> None:
        again = self.model.loaded
        new_boot = again and snapshot.get("boot") != self.model.boot
        change = self.model.load(snapshot)
        lost = self.link.state == "lost"
        self.link = Link("connected")
        self._was_connected = True
        plan = self.model.system.plan
        if lost and again:
            how = "a new boot of" if new_boot else "plan"
            log.info("top: subscribed again: %s %s", how, plan)
            self.notify(f"connected again: {how} {plan}", timeout=4)
        self._changed(change, now=True)
        self._follow(self.selected)
        self._sample()
        if self.standalone:
            # What was just built lives long: keep the collector from scanning
            # it again and again, which with a thousand modules stalls the screen.
            gc.freeze()

    def _lost(self, problem: str, delay: float) -> None:
        was = self.link.state
        self.link = Link("lost", f"retrying in {delay:g}s: {problem}")
        self._draw_bar()
        if was == "connected":
            log.warning("top: lost the event stream: %s", problem)
            self.notify(
                f"lost the orchestrator: {problem}", severity="warning", timeout=6
            )

    def _bluescreen(self, event: dict[str, Any]) -> None:
        module = event.get("module")
        error = event.get("error") or "failed"
        if self.console_mode:
            # The bluescreen takes the console: leave it, terminal restored.
            log.info("top: %s failed and is critical; leaving the console", module)
            self.exit(0)
            return
        log.warning("top: %s failed and is critical: %s", module, error)
        self.notify(
            f"{module} failed and is critical: {error}; the system is in rescue",
            severity="error",
            timeout=30,
        )

    def _changed(self, change: Change, now: bool = False) -> None:
        self._pending.merge(change)
        if now:
            self._redraw()
        elif not self._redraw_due:
            self._redraw_due = True
            self.set_timer(REDRAW_EVERY, self._redraw)

    def _redraw(self) -> None:
        change, self._pending = self._pending, Change()
        self._redraw_due = False
        self._draw_bar()
        # Under a state filter a change of state can move a module in or out.
        refilter = change.modules and self.table.state_filter != "all"
        if change.structure or refilter:
            self._build_tree()
        elif change.modules:
            self.dep_tree.update_modules(change.modules)
        self.table.reload()
        self._draw_filters()
        self.logs.show_title()
        screen = self.screen
        if isinstance(screen, (WhyScreen, TimelineScreen)):
            screen.update_view()

    def _build_tree(self) -> None:
        """The tree, showing what the table's filters let through."""
        table = self.table
        filtered = bool(table.name_filter) or table.state_filter != "all"
        keep = self.model.kept_by(table.name_filter, table.state_filter)
        self.dep_tree.build(keep if filtered else None)
        if self.selected:
            self.dep_tree.show_module(self.selected)

    def _draw_bar(self) -> None:
        self._bar.show(self.model, self.link, self.clock())

    def _tick(self) -> None:
        self._draw_bar()
        self.table.refresh()
        if (
            isinstance(self.screen, TimelineScreen)
            and self.model.system.boot_took is None
        ):
            self.screen.update_view()

    # CPU and memory, off the loop.

    def _sample(self) -> None:
        if self._sampling or not self.model.loaded or self.sample is None:
            return
        self._sampling = True
        self._sample_in_thread(self.sample, self.model.pids())

    @work(thread=True, group="sample", exit_on_error=False)
    def _sample_in_thread(self, sample: SampleFunction, pids: dict[str, int]) -> None:
        try:
            usage = sample(pids)
            problem = None
        except Exception as exc:  # psutil can fail in many ways; keep going
            usage, problem = {}, f"{type(exc).__name__}: {exc}"
        try:
            self.call_from_thread(self._sampled, usage, problem)
        except RuntimeError:
            pass

    def _sampled(self, usage: Usage, problem: str | None) -> None:
        self._sampling = False
        if problem is not None:
            if not self._sample_failed:
                log.warning("top: cannot read CPU and memory: %s", problem)
                self.notify(
                    f"cannot read CPU and memory: {problem}", severity="warning"
                )
            self._sample_failed = True
            return
        if self.model.sampled(usage):
            # Only the table shows the figures; the tree need not be touched.
            self.table.refresh()

    # Selection and the log pane.

    def on_module_table_highlighted(self, message: ModuleTable.Highlighted) -> None:
        self._select(message.name)

    def on_tree_node_highlighted(self, message: Tree.NodeHighlighted[TreeItem]) -> None:
        item = message.node.data
        if not self.dep_tree.has_focus or item is None or item.kind != "module":
            return
        if item.name in self.table.rows:
            self.table.select(item.name)
        else:
            self._select(item.name)

    def _select(self, name: str | None) -> None:
        if name == self.selected:
            return
        self.selected = name
        self._follow(name)

    @work(exclusive=True, group="logs")
    async def _follow(self, name: str | None) -> None:
        pane = self.logs
        if name is None:
            pane.start(None, [])
            return
        await asyncio.sleep(FOLLOW_DELAY)
        delay = RETRY_FIRST
        while True:
            try:
                stream = self.source.follow_logs(name, LOG_BACKLOG)
                try:
                    first = await anext(stream)
                    pane.start(name, first.get("lines") or [])
                    delay = RETRY_FIRST
                    async for line in stream:
                        pane.add(line)
                finally:
                    await stream.aclose()
                problem = "the log stream ended"
            except ClientError as exc:
                problem = exc.message
                if problem.startswith("unknown module"):
                    pane.lost(problem)
                    return
            except (OSError, ValueError, StopAsyncIteration) as exc:
                problem = f"the log stream broke: {exc}"
            log.info("top: logs of %s: %s", name, problem)
            pane.lost(f"{problem}; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def on_log_view_scrolled_back(self, message: LogView.ScrolledBack) -> None:
        self.logs.set_following(False)

    def on_log_view_scrolled_to_end(self, message: LogView.ScrolledToEnd) -> None:
        self.logs.set_following(True)

    # Layout.

    def _arrange(self) -> None:
        wide = self.size.width >= WIDE
        shown = wide if self.tree_shown is None else self.tree_shown
        tree, table = self._tree, self._modules
        tree.display = shown
        table.display = wide or not shown
        tree.styles.width = 30 if wide else "1fr"
        if not shown and tree.has_focus:
            self.table.focus()

    def _draw_filters(self) -> None:
        table = self.table
        bar = self._filter_bar
        editing = self._name_field.has_class("-shown")
        active = bool(table.name_filter) or table.state_filter != "all"
        bar.set_class(active or editing, "-shown")
        if editing and not table.name_filter:
            text = "filter: type part of a name; enter keeps it, escape clears it"
            bar.update(text, layout=False)
        elif active:
            parts = []
            if table.name_filter:
                parts.append(f"name has {table.name_filter!r}")
            if table.state_filter != "all":
                parts.append(f"state {table.state_filter}")
            shown, total = len(table.rows), len(self.model.modules)
            text = f"filter: {', '.join(parts)} ({shown} of {total}); / or v"
            bar.update(text, layout=False)

    # Actions.

    def action_control(self, op: str) -> None:
        if self.selected is None:
            self.notify("no module selected", severity="warning")
            return
        self.action_control_module(op, self.selected)

    def action_control_module(self, op: str, name: str) -> None:
        """Start, stop or restart `name`, asking first if it is critical."""
        module = self.model.modules.get(name)
        if module is None:
            log.warning("top: %s: unknown module %r", op, name)
            self.notify(f"unknown module {name!r}", severity="error")
            return
        if not module.critical:
            self._control(op, name)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._control(op, name)

        self.push_screen(
            ConfirmScreen(
                f"{op.capitalize()} {name}?",
                f"{name} is critical: if it fails for good, the system enters "
                "rescue and the bluescreen takes the console.",
            ),
            answered,
        )

    @work(group="control")
    async def _control(self, op: str, name: str) -> None:
        try:
            result = await self.source.request(op, module=name)
        except ClientError as exc:
            log.warning("top: %s %s: %s", op, name, exc)
            self.notify(f"cannot {op} {name}: {exc}", severity="error")
            return
        record = result.get("module") or {}
        state, reason = record.get("state"), record.get("reason")
        if not result.get("settled", True):
            log.warning("top: %s %s: did not settle in time (%s)", op, name, state)
            self.notify(
                f"{name}: {op} did not settle in time ({state})", severity="warning"
            )
        elif op != "stop" and state in ("failed", "blocked"):
            log.warning("top: %s %s: %s (%s)", op, name, state, reason)
            self.notify(f"{name} is {state}: {reason}; w says why", severity="error")
        else:
            self.notify(f"{name}: {state} ({reason})", timeout=4)

    async def _fetch_module(self, name: str) -> None:
        """Ask for one module's full record (its failure), for the why view."""
        try:
            result = await self.source.request("status", module=name)
        except ClientError as exc:
            log.warning("top: status %s: %s", name, exc)
            self.notify(f"cannot read {name}'s failure: {exc}", severity="warning")
            return
        record = result.get("module") or {}
        module = self.model.modules.get(name)
        if module is not None and record.get("failure"):
            module.failure = record["failure"]
            self._changed(Change({name}))

    def action_why(self) -> None:
        if self.selected is None:
            self.notify("no module selected", severity="warning")
            return
        self.push_screen(WhyScreen(self.model, self.selected, self._fetch_module))

    def action_timeline(self) -> None:
        self.push_screen("timeline")

    def action_help(self) -> None:
        self.push_screen("help")

    def action_tree(self) -> None:
        wide = self.size.width >= WIDE
        shown = wide if self.tree_shown is None else self.tree_shown
        self.tree_shown = not shown
        self._arrange()
        if self.tree_shown:
            self.dep_tree.focus()

    def action_follow(self) -> None:
        pane = self.logs
        pane.set_following(not pane.following)

    def action_filter_names(self) -> None:
        field = self._name_field
        field.add_class("-shown")
        field.value = self.table.name_filter
        field.focus()
        self._draw_filters()

    def action_filter_state(self) -> None:
        table = self.table
        index = STATE_FILTERS.index(table.state_filter)
        table.state_filter = STATE_FILTERS[(index + 1) % len(STATE_FILTERS)]
        table.reload()
        self._build_tree()
        self._draw_filters()

    def action_search_log(self) -> None:
        pane = self.logs
        pane.set_following(False)
        pane.add_class("-searching")
        field = pane.search_field
        field.value = pane.term
        field.focus()

    def action_search_next(self, step: int) -> None:
        pane = self.logs
        if not pane.term:
            self.action_search_log()
            return
        pane.set_following(False)
        if not pane.search(pane.term, step):
            self.notify(f"no line has {pane.term!r}", severity="warning", timeout=3)

    def on_input_changed(self, message: Input.Changed) -> None:
        if message.input.id == "filter":
            self.table.name_filter = message.value
            self.table.reload()
            self._build_tree()
            self._draw_filters()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        if message.input.id == "filter":
            self._close_filter()
        elif message.input.id == "log-search":
            pane = self.logs
            pane.remove_class("-searching")
            pane.view.focus()
            term = message.value.strip()
            if term and not pane.search(term):
                self.notify(f"no line has {term!r}", severity="warning", timeout=3)

    def on_search_input_cancelled(self, message: SearchInput.Cancelled) -> None:
        if message.input.id == "filter":
            self.table.name_filter = ""
            self.table.reload()
            self._build_tree()
            self._close_filter()
        else:
            self.logs.remove_class("-searching")
            self.logs.view.focus()

    def _close_filter(self) -> None:
        self._name_field.remove_class("-shown")
        self.table.focus()
        self._draw_filters()

    def action_copy(self) -> None:
        text = self.logs.visible_text()
        if not text:
            self.notify("the log pane is empty: nothing to copy", severity="warning")
            return
        count = len(text.splitlines())
        self.copy_to_clipboard(text)
        where = "to the clipboard"
        if self.copy_path is not None and not has_clipboard_escape():
            try:
                self.copy_path.write_text(text + "\n")
                where = f"to {self.copy_path}"
            except OSError as exc:
                log.warning("top: cannot write %s: %s", self.copy_path, exc.strerror)
                self.notify(
                    f"cannot write {self.copy_path}: {exc.strerror}", severity="error"
                )
                return
        self.notify(f"copied {count} lines {where}", timeout=3)

    def action_quit(self) -> None:  # type: ignore[override]
        self.exit(0)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for title, help, action in (
            ("Restart module", "restart the selected module", "control('restart')"),
            ("Stop module", "stop the selected module", "control('stop')"),
            ("Start module", "start the selected module", "control('start')"),
            ("Why", "the chain of reasons for the selected module", "why"),
            ("Boot timeline", "when each module started and became ready", "timeline"),
            ("Follow or pause the log", "toggle following the log pane", "follow"),
            ("Filter by state", "cycle the state filter", "filter_state"),
            ("Filter by name", "type part of a module's name", "filter_names"),
            ("Copy log lines", "copy the lines shown in the log pane", "copy"),
            (
                "Dependency tree",
                "show or hide the tree (in the table's place when narrow)",
                "tree",
            ),
            ("Keys", "every key of partenza top", "help"),
        ):
            yield SystemCommand(title, help, self._runner(action))

    def _runner(self, action: str) -> Callable[[], Any]:
        async def run_it() -> None:
            await self.run_action(action)

        return run_it


def run(socket_path: Path | str, *, tty: str | None = None) -> int:
    """Run `partenza top` on this terminal, or on `tty`, until quit; the exit code.

    `tty` (or PARTENZA_TOP_TTY) names a terminal device to run on instead, as
    the orchestrator does when it hands a console over: the app then leaves
    by itself when a critical failure gives the console to the bluescreen.
    SIGTERM and SIGHUP restore the terminal and end it with 0.
    """
    _quiet_logging()
    if small_terminal():
        whole_cell_scrollbars()
    if plain_ascii_terminal():
        ascii_lines()
    tty = tty or os.environ.get("PARTENZA_TOP_TTY") or None
    if tty:
        try:
            _take_terminal(tty)
        except OSError as exc:
            log.warning("top: cannot open %s: %s", tty, exc.strerror)
            sys.stderr.write(f"partenza: cannot open {tty}: {exc.strerror}\n")
            return 1
    path = Path(socket_path)
    app = TopApp(
        SocketSource(path),
        sample=Sampler(),
        console_mode=tty is not None,
        copy_path=path.parent / "top-copy.txt",
        standalone=True,
        where=str(path),
    )
    result = app.run()
    if keeps_no_screen():
        # Nothing gives the screen back: clear what the app drew, so that the
        # progress lines (or a shell) do not land on top of it.
        sys.stdout.write("\x1b[H\x1b[2J")
        sys.stdout.flush()
    if result is not None:
        return int(result)
    return int(app.return_code or 0)


def _take_terminal(tty: str) -> None:
    """Make `tty` this process's standard input, output and error."""
    fd = os.open(tty, os.O_RDWR)
    if os.getsid(0) == os.getpid():
        try:
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        except OSError as exc:
            log.warning("top: cannot make %s the controlling terminal: %s", tty, exc)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def _quiet_logging() -> None:
    """Keep log records off the screen: to PARTENZA_TOP_LOG, or nowhere."""
    logger = logging.getLogger("tui")
    logger.propagate = False
    target = os.environ.get("PARTENZA_TOP_LOG")
    if target:
        handler: logging.Handler = logging.FileHandler(target)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        logger.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()
    logger.addHandler(handler)
