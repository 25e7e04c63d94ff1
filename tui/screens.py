"""The screens over the main one: why, the boot timeline, help, a confirmation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Static

from partenza.render import failure_output
from partenza.units import format_duration
from tui.model import Bar, Model, Reason
from tui.style import BOLD, DIM, GLYPHS, glyph, state_style

Clock = Callable[[], float]
Fetch = Callable[[str], Awaitable[None]]

TITLE_CSS = """
    .title {
        height: 1;
        background: $panel;
        padding: 0 1;
        text-style: bold;
    }
    .title:nocolor {
        text-style: bold reverse;
    }
"""


class WhyScreen(Screen[None]):
    """Why a module is in its state: the chain of reasons to the root cause."""

    DEFAULT_CSS = (
        TITLE_CSS
        + """
    WhyScreen #why-body {
        padding: 1 2;
    }
    """
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,w,q", "app.pop_screen", "Back"),
        Binding("r", "control('restart')", "Restart cause"),
        Binding("s", "control('stop')", "Stop cause", show=False),
        Binding("u", "control('start')", "Start cause"),
    ]

    def __init__(self, model: Model, module: str, fetch: Fetch) -> None:
        super().__init__()
        self.model = model
        self.module = module
        self.fetch = fetch
        self._fetched: set[str] = set()
        self._body = Static(id="why-body")

    def compose(self) -> ComposeResult:
        yield Static(f"why {self.module}", classes="title")
        with VerticalScroll():
            yield self._body
        yield Footer()

    def on_mount(self) -> None:
        self.update_view()

    @property
    def cause(self) -> str | None:
        """The module at the end of the chain."""
        chain = self.model.chain(self.module)
        return chain[-1].module if chain else None

    def update_view(self) -> None:
        chain = self.model.chain(self.module)
        self._body.update(why_text(chain))
        for link in chain:
            failure = link.failure or {}
            wanted = link.state == "failed" and "logs" not in failure
            if wanted and link.module not in self._fetched:
                self._fetched.add(link.module)
                self.run_worker(self.fetch(link.module), group="why")

    async def action_control(self, op: str) -> None:
        cause = self.cause
        if cause is not None:
            await self.app.run_action(f"control_module({op!r}, {cause!r})")


def why_text(chain: list[Reason]) -> Text:
    """The chain as lines: each cause under the module it holds back."""
    text = Text()
    if not chain:
        return Text("no such module", DIM)
    first = chain[0]
    for depth, link in enumerate(chain):
        indent = "  " * depth
        text.append(indent + ("<- " if depth else ""))
        text.append(f"{glyph(link.state)} ", state_style(link.state))
        text.append(link.module, BOLD)
        text.append(f" {link.state}", state_style(link.state))
        text.append(f": {link.reason}\n")
        failure = link.failure
        if failure:
            pad = indent + "     "
            facts = []
            if failure.get("stage"):
                facts.append(f"stage {failure['stage']}")
            if failure.get("exit"):
                facts.append(f"last exit {failure['exit']}")
            if failure.get("restarts") is not None:
                facts.append(f"{failure['restarts']} restarts")
            if failure.get("file"):
                facts.append(f"manifest {failure['file']}")
            if facts:
                text.append(pad + "; ".join(facts) + "\n", DIM)
            if failure.get("blocks"):
                text.append(pad + "holds back: " + ", ".join(failure["blocks"]) + "\n")
            logs = failure_output(failure)
            if logs:
                text.append(pad + "its last lines:\n", DIM)
                for mark, line in logs[-8:]:
                    text.append(pad + f"  {mark} " + line + "\n")
    text.append("\n")
    root = chain[-1]
    if len(chain) == 1 and root.state in ("ready", "stopped", "inactive"):
        text.append(f"{first.module} is {first.state}: nothing holds it back.", DIM)
    elif len(chain) > 1:
        text.append("root cause: ", BOLD)
        text.append(f"{root.module} {root.state}", state_style(root.state))
        text.append(". r restarts it, u starts it.", DIM)
    else:
        text.append(f"{root.module} is its own root cause.", DIM)
        text.append(" r restarts it, u starts it.", DIM)
    return text


class TimelineView(ScrollView, can_focus=True):
    """One bar per module: from its start to its readiness, on one time scale."""

    DEFAULT_CSS = """
    TimelineView {
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    """
    NAME = 14
    LABEL = 22

    def __init__(self, model: Model, clock: Clock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.clock = clock
        self.bars = model.timeline()

    def reload(self) -> None:
        self.bars = self.model.timeline()
        self.virtual_size = self.virtual_size.with_height(len(self.bars) + 1)
        self.refresh()

    def on_mount(self) -> None:
        self.reload()

    def span(self) -> float:
        """Seconds the scale covers: the boot, or so far while it runs."""
        took = self.model.system.boot_took
        if took is None:
            started = self.model.system.boot_started
            took = self.clock() - started if started else 0.0
            took = max([took, *(b.ready or b.started or 0.0 for b in self.bars)])
        return max(took, 0.001)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        room = max(10, width - self.NAME - self.LABEL - 4)
        span = self.span()
        line = Text(no_wrap=True, end="")
        if y == 0:
            end = format_duration(span)
            line.append(" " * (self.NAME + 3) + "0s".ljust(room - len(end)) + end, DIM)
            return _strip(self, line, width, base)
        index = round(self.scroll_offset.y) + y - 1
        if not 0 <= index < len(self.bars):
            return Strip.blank(width, base)
        bar = self.bars[index]
        style = state_style(bar.state)
        line.append(bar.module[: self.NAME].ljust(self.NAME))
        line.append(f" {glyph(bar.state)} ", style)
        cells = [" "] * room
        later = bar.started is not None and bar.started > span
        if later:
            cells[-1] = ">"
        elif bar.started is not None:
            start = min(room - 1, int(bar.started / span * room))
            end_at = span if bar.ready is None else min(bar.ready, span)
            stop = min(room, max(start + 1, round(end_at / span * room)))
            for cell in range(start, stop):
                cells[cell] = "=" if bar.ready is None else "#"
        line.append("".join(cells), style if bar.ready is not None else DIM)
        line.append(" " + self._label(bar, later)[: self.LABEL], DIM)
        return _strip(self, line, width, base)

    @staticmethod
    def _label(bar: Bar, later: bool) -> str:
        if bar.started is None:
            return "not started"
        when = f"+{format_duration(bar.started)}"
        if later:
            return f"{when}, after the boot"
        if bar.ready is None:
            return f"{when}, not ready"
        return f"{when} ready in {format_duration(max(0.0, bar.ready - bar.started))}"


def _strip(widget: ScrollView, line: Text, width: int, style: Style) -> Strip:
    segments = list(line.render(widget.app.console))
    return Strip(segments).crop_extend(0, width, style).simplify()


class TimelineScreen(Screen[None]):
    """The boot as bars: when each module started and became ready."""

    DEFAULT_CSS = TITLE_CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,t,q", "app.pop_screen", "Back"),
    ]

    def __init__(self, model: Model, clock: Clock) -> None:
        super().__init__()
        self.model = model
        self.clock = clock
        self._heading = Static(classes="title", id="timeline-title")
        self._view = TimelineView(model, clock)

    def compose(self) -> ComposeResult:
        yield self._heading
        yield self._view
        yield Static(
            "# from start to ready   = started, not ready   > started after the boot",
            id="timeline-legend",
        )
        yield Footer()

    def _title(self) -> str:
        if not self.model.loaded:
            return "boot timeline: waiting for the orchestrator"
        system = self.model.system
        took = system.boot_took
        how = f"booted in {format_duration(took)}" if took is not None else "booting"
        return f"boot timeline of {system.plan}: {how}"

    def on_screen_resume(self) -> None:
        self.update_view()

    def update_view(self) -> None:
        self._heading.update(self._title(), layout=False)
        self._view.reload()


HELP_KEYS = (
    ("up/down, j/k", "move in the table, the tree or the log"),
    ("tab", "go to the next pane: table, tree, log"),
    ("r / s / u", "restart / stop / start the selected module"),
    ("w", "why: the chain of reasons down to the root cause"),
    ("t", "the boot timeline"),
    ("/", "filter modules by name (table), search the log (log)"),
    ("n / N", "next / previous match in the log"),
    ("v", "filter by state: all, trouble, then each state"),
    ("o / O, R", "sort by the next / previous column; reverse"),
    ("f", "follow the log, or pause it (end also follows)"),
    ("c", "copy the lines shown in the log pane"),
    ("d", "the dependency tree: beside the table, or in its place when narrow"),
    ("ctrl+p", "the command palette"),
    ("?", "this help"),
    ("q", "quit"),
)


class HelpScreen(ModalScreen[None]):
    """The keys, and what the state glyphs mean."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        background: $panel;
        border: solid $primary;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "app.pop_screen", "Close"),
    ]

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("partenza top\n", BOLD)
        for keys, what in HELP_KEYS:
            text.append(f"  {keys:<14}", BOLD)
            text.append(f"{what}\n")
        text.append("\nstates  ", BOLD)
        for index, (state, mark) in enumerate(GLYPHS.items()):
            if index == 5:
                text.append("\n        ")
            text.append(f"{mark} ", state_style(state))
            text.append(f"{state}  ")
        text.append("\n        a * after a name marks a critical module", DIM)
        with Vertical():
            yield Static(text)


class ConfirmScreen(ModalScreen[bool]):
    """Asks before acting on a critical module."""

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 60;
        max-width: 100%;
        height: auto;
        background: $panel;
        border: solid $error;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str) -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        text = Text()
        text.append(self.question + "\n", BOLD)
        text.append(self.detail + "\n\n")
        text.append("y", BOLD)
        text.append(" yes    ")
        text.append("n", BOLD)
        text.append(" no")
        with Vertical():
            yield Static(text)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
