"""The widgets of the main screen: system bar, module table, tree and log pane.

Each draws from the `Model` it is given and knows nothing of the socket. The
table and the log pane render only the lines on screen, so a thousand modules
or two thousand log lines a second cost no more to draw than ten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rich.highlighter import Highlighter
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Log, Static, Tree
from textual.widgets.tree import TreeNode

from partenza.render import log_line
from partenza.units import format_duration
from tui.model import SEVERITY, Model, TreeItem, short_exit, size, uptime_text
from tui.style import (
    ALERT,
    BOLD,
    DIM,
    MATCH,
    NOTE,
    STDERR,
    SYSTEM_STYLES,
    glyph,
    state_style,
)

Clock = Callable[[], float]


@dataclass
class Link:
    """The state of the connection to the orchestrator."""

    state: Literal["connecting", "connected", "lost"] = "connecting"
    detail: str = ""


class SystemBar(Static):
    """Two lines: the system's state, uptime and counts; then why, or the link."""

    DEFAULT_CSS = """
    SystemBar {
        height: 2;
        background: $panel;
        padding: 0 0 0 1;
        text-wrap: nowrap;
        text-overflow: clip;
        &.-lost {
            height: auto;
            max-height: 4;
            text-wrap: wrap;
        }
    }
    """

    def show(self, model: Model, link: Link, now: float) -> None:
        system = model.system
        first = Text()
        second = Text()
        # Why the link is down is worth its lines: the hint comes last.
        self.set_class(link.state != "connected", "-lost")
        if link.state != "connected":
            label = "CONNECTING" if link.state == "connecting" else "DISCONNECTED"
            first.append(f" {label} ", ALERT)
            if model.loaded:
                first.append(f"  last seen: {system.plan} {system.state}", DIM)
            second.append(link.detail)
        else:
            first.append(system.plan or "?", BOLD)
            first.append(" ")
            style = SYSTEM_STYLES.get(system.state, BOLD)
            first.append(f" {system.state.upper()} ", style)
            if system.boot_started:
                first.append(f" up {format_duration(now - system.boot_started)}")
            counts = model.counts()
            total = sum(counts.values())
            first.append(f"  {total} module{'s' if total != 1 else ''}: ")
            ordered = sorted(counts.items(), key=lambda kv: SEVERITY.get(kv[0], -1))
            for index, (state, count) in enumerate(ordered):
                if index:
                    first.append(", ")
                first.append(f"{count} {state}", state_style(state))
            reason = system.reason
            if system.rescue:
                reason = f"rescue: {system.rescue} failed and is critical"
            second.append(reason, DIM if system.state == "running" else BOLD)
            if system.boot_took is not None:
                second.append(f"  (booted in {format_duration(system.boot_took)})", DIM)
        self.update(Text("\n").join([first, second]), layout=link.state != "connected")


@dataclass(frozen=True)
class Column:
    """One column of the module table; lower priorities stay at narrow widths."""

    key: str
    title: str
    width: int
    priority: int
    right: bool = False


COLUMNS = (
    Column("name", "MODULE", 8, 0),
    Column("state", "STATE", 14, 0),
    Column("health", "HEALTH", 6, 6),
    Column("pid", "PID", 7, 3, right=True),
    Column("uptime", "UPTIME", 7, 2, right=True),
    Column("restarts", "RST", 4, 1, right=True),
    Column("cpu", "CPU%", 5, 4, right=True),
    Column("rss", "RSS", 6, 5, right=True),
    Column("exit", "EXIT", 9, 7),
    Column("reason", "REASON", 12, 8),
)
NAME_MAX = 28


class ModuleTable(ScrollView, can_focus=True):
    """The modules, one a line; columns that do not fit are left out."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "module-table--header",
        "module-table--cursor",
    }
    DEFAULT_CSS = """
    ModuleTable {
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        & > .module-table--header {
            text-style: bold;
            background: $panel;
        }
        & > .module-table--cursor {
            background: $block-cursor-blurred-background;
        }
        &:focus > .module-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: bold;
        }
        &:nocolor > .module-table--cursor {
            text-style: reverse;
        }
        &:nocolor > .module-table--header {
            text-style: bold underline;
        }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("slash", "app.filter_names", "Filter"),
        Binding("v", "app.filter_state", "State", show=False),
        Binding("o", "sort(1)", "Sort", show=False),
        Binding("O", "sort(-1)", "Sort back", show=False),
        Binding("R", "reverse", "Reverse", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to another module (or to none)."""

        def __init__(self, name: str | None) -> None:
            super().__init__()
            self.name = name

    cursor = reactive(0, always_update=True, repaint=False)

    def __init__(self, model: Model, clock: Clock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.clock = clock
        self.rows: list[str] = []
        self.selected: str | None = None
        self.name_filter = ""
        self.state_filter = "all"
        self.sort_column = "name"
        self.sort_reverse = False
        self._layout: tuple[int, int, list[tuple[Column, int]]] | None = None
        self._name_width = 8

    # What it shows.

    def reload(self) -> None:
        """Take the rows afresh from the model: filter, sort, keep the cursor."""
        self.rows = self.model.rows(
            name_filter=self.name_filter,
            state_filter=self.state_filter,
            sort=self.sort_column,
            reverse=self.sort_reverse,
            now=self.clock(),
        )
        longest = max((len(self._name_cell(n)) for n in self.rows), default=6)
        self._name_width = max(8, min(NAME_MAX, longest))
        self._layout = None
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        if self.selected in self.rows:
            self.cursor = self.rows.index(self.selected)
        else:
            self.cursor = min(self.cursor, max(0, len(self.rows) - 1))
        self.refresh()

    def select(self, name: str) -> None:
        if name in self.rows:
            self.cursor = self.rows.index(name)

    def watch_cursor(self, cursor: int) -> None:
        name = self.rows[cursor] if 0 <= cursor < len(self.rows) else None
        self._show_cursor()
        self.refresh()
        if name != self.selected:
            self.selected = name
            self.post_message(self.Highlighted(name))

    def _show_cursor(self) -> None:
        visible = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_edge(self, end: int) -> None:
        if self.rows:
            self.cursor = len(self.rows) - 1 if end else 0

    def action_sort(self, step: int) -> None:
        keys = [c.key for c in COLUMNS if c.key != "reason"]
        index = keys.index(self.sort_column) if self.sort_column in keys else 0
        self.sort_column = keys[(index + step) % len(keys)]
        self.sort_reverse = False
        self.reload()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.reload()

    # Drawing.

    def layout_columns(self, width: int) -> list[tuple[Column, int]]:
        """The columns that fit in `width` cells, each with its width.

        The name column is as wide as the longest name (within limits); the
        others join by priority while they fit, and the reason takes the rest.
        """
        if self._layout is not None and self._layout[:2] == (width, self._name_width):
            return self._layout[2]
        name_width = self._name_width
        chosen = {"name", "state"}
        used = name_width + 1 + COLUMNS[1].width
        for column in sorted(COLUMNS[2:], key=lambda c: c.priority):
            if used + 1 + column.width <= width:
                chosen.add(column.key)
                used += 1 + column.width
        layout = []
        for column in COLUMNS:
            if column.key in chosen:
                cells = name_width if column.key == "name" else column.width
                if column.key == "reason":
                    cells += width - used
                layout.append((column, cells))
        self._layout = (width, name_width, layout)
        return layout

    def _name_cell(self, name: str) -> str:
        module = self.model.modules.get(name)
        return f"{name}*" if module is not None and module.critical else name

    def _cell(self, key: str, name: str, now: float) -> tuple[str, Style | None]:
        module = self.model.modules[name]
        if key == "name":
            return self._name_cell(name), BOLD if module.critical else None
        if key == "state":
            style = state_style(module.state)
            return f"{glyph(module.state)} {module.state}", style
        if key == "health":
            return module.health, None
        if key == "pid":
            return str(module.pid) if module.pid else "-", None
        if key == "uptime":
            return uptime_text(module, now), None
        if key == "restarts":
            return str(module.restarts), BOLD if module.restarts else None
        if key == "cpu":
            return ("-" if module.cpu is None else f"{module.cpu:.1f}"), None
        if key == "rss":
            return size(module.rss), None
        if key == "exit":
            return short_exit(module.last_exit), None
        return module.reason, DIM

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        layout = self.layout_columns(width)
        line = Text(no_wrap=True, end="")
        if y == 0:
            style = self.get_component_rich_style("module-table--header")
            for index, (column, cells) in enumerate(layout):
                title = column.title
                if column.key == self.sort_column:
                    title += " ^" if self.sort_reverse else " v"
                line.append(
                    _fit(title, cells, column.right) + " " * (index < len(layout) - 1)
                )
            line.stylize(style)
            return _strip(self, line, width, base + style)
        index = round(self.scroll_offset.y) + y - 1
        if not 0 <= index < len(self.rows):
            return Strip.blank(width, base)
        name = self.rows[index]
        if name not in self.model.modules:
            return Strip.blank(width, base)
        now = self.clock()
        for position, (column, cells) in enumerate(layout):
            text, style = self._cell(column.key, name, now)
            line.append(_fit(text, cells, column.right), style)
            if position < len(layout) - 1:
                line.append(" ")
        if index == self.cursor:
            line.pad_right(max(0, width - line.cell_len))
            line.stylize(self.get_component_rich_style("module-table--cursor"))
        return _strip(self, line, width, base)


def _fit(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "~"
    return text.rjust(width) if right else text.ljust(width)


def _strip(widget: ScrollView, line: Text, width: int, style: Style) -> Strip:
    segments = list(line.render(widget.app.console))
    return Strip(segments).crop_extend(0, width, style).simplify()


class DependencyTree(Tree[TreeItem]):
    """Modules under what uses them; sidecars under their target; providers."""

    ICON_NODE = "> "
    ICON_NODE_EXPANDED = ""
    DEFAULT_CSS = """
    DependencyTree {
        width: 30;
        border-right: solid $panel-lighten-2;
        scrollbar-size-vertical: 1;
    }
    DependencyTree:ansi {
        border-right: solid ansi_white;
        & > .tree--guides, & > .tree--guides-hover, & > .tree--guides-selected {
            color: ansi_white;
        }
    }
    """

    def __init__(self, model: Model, **kwargs: Any) -> None:
        super().__init__("plan", **kwargs)
        self.model = model
        self.show_root = False
        self.guide_depth = 2
        self._by_module: dict[str, list[TreeNode[TreeItem]]] = {}

    def build(self, keep: Callable[[str], bool] | None = None) -> None:
        """Build the tree afresh from the model; with `keep`, only the modules
        it keeps and what leads to them."""
        self.clear()
        self._by_module = {}
        for item in self.model.tree(keep):
            self._add(self.root, item)

    def _add(self, parent: TreeNode[TreeItem], item: TreeItem) -> None:
        label = self.label_for(item)
        if item.children:
            node = parent.add(label, data=item, expand=True)
            for child in item.children:
                self._add(node, child)
        else:
            node = parent.add_leaf(label, data=item)
        if item.kind == "module":
            self._by_module.setdefault(item.name, []).append(node)

    def update_modules(self, names: Iterable[str]) -> None:
        for name in names:
            for node in self._by_module.get(name, ()):
                if node.data is not None:
                    node.set_label(self.label_for(node.data))

    def show_module(self, name: str) -> None:
        nodes = self._by_module.get(name)
        if nodes:
            self.move_cursor(nodes[0])

    def label_for(self, item: TreeItem) -> Text:
        if item.kind == "capability":
            return Text(f"[{item.name}]", DIM + Style(italic=True))
        if item.kind == "absent":
            return Text(f"  {item.name} (absent)", DIM)
        module = self.model.modules.get(item.name)
        state = module.state if module else "inactive"
        text = Text(no_wrap=True)
        text.append(glyph(state), state_style(state))
        text.append(" ")
        style = DIM if item.role == "standby" else state_style(state)
        text.append(item.name, style)
        if module is not None and module.critical:
            text.append("*", BOLD)
        tag = {"sidecar": " sidecar", "wants": " (wants)", "standby": " standby"}
        text.append(tag.get(item.role, ""), DIM)
        if item.repeat and item.role != "standby":
            text.append(" ^", DIM)
        return text


class _LogHighlighter(Highlighter):
    """Marks stderr lines, Partenza's notes and search matches."""

    def __init__(self) -> None:
        self.term = ""

    def highlight(self, text: Text) -> None:
        plain = text.plain
        mark = plain[12:13]
        if mark == "!":
            text.stylize(STDERR)
        elif mark == "*":
            text.stylize(NOTE)
        if self.term:
            folded, term = plain.lower(), self.term.lower()
            start = folded.find(term)
            while start != -1:
                text.stylize(MATCH, start, start + len(term))
                start = folded.find(term, start + len(term))


class LogView(Log):
    """The lines of one module; scrolling back pauses the pane."""

    class ScrolledBack(Message):
        """The person scrolled away from the end."""

    class ScrolledToEnd(Message):
        """The person went back to the end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(highlight=True, **kwargs)
        self.highlighter = _LogHighlighter()

    def action_scroll_up(self) -> None:
        self.post_message(self.ScrolledBack())
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self.post_message(self.ScrolledBack())
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self.post_message(self.ScrolledBack())
        super().action_scroll_home()

    def action_scroll_end(self) -> None:
        self.post_message(self.ScrolledToEnd())
        super().action_scroll_end()

    def set_term(self, term: str) -> None:
        highlighter = self.highlighter
        if isinstance(highlighter, _LogHighlighter):
            highlighter.term = term
        self.notify_style_update()
        self.refresh()


LOG_LINES = 2000
"""Lines the pane keeps, on screen and paused."""
FLUSH_EVERY = 0.1
"""Seconds between writes of new lines into the pane."""


class LogPane(Vertical):
    """A module's output, following live; pause, scroll, search, copy."""

    DEFAULT_CSS = """
    LogPane {
        height: 40%;
        min-height: 4;
    }
    LogPane #log-title {
        height: 1;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: clip;
    }
    LogPane:nocolor #log-title {
        text-style: reverse;
    }
    LogPane LogView {
        height: 1fr;
        overflow-x: auto;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
    }
    LogPane #log-search {
        display: none;
    }
    LogPane.-searching #log-search {
        display: block;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "app.follow", "Follow"),
        Binding("slash", "app.search_log", "Search", show=False),
        Binding("n", "app.search_next(1)", "Next", show=False),
        Binding("N", "app.search_next(-1)", "Previous", show=False),
    ]

    def __init__(self, model: Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.module: str | None = None
        self.following = True
        self.problem = ""
        self.term = ""
        self.match: int | None = None
        self.matches = 0
        self._line: int | None = None
        self._incoming: list[str] = []
        self._held: deque[str] = deque(maxlen=LOG_LINES)
        self._skipped = 0
        self.written = 0
        """Lines written into the view so far."""
        self._heading = Static(id="log-title")
        self.view = LogView(max_lines=LOG_LINES, id="log-view")
        self.search_field = SearchInput(placeholder="search the log", id="log-search")

    def compose(self) -> ComposeResult:
        yield self._heading
        yield self.view
        yield self.search_field

    def on_mount(self) -> None:
        self.set_interval(FLUSH_EVERY, self.flush)
        self.show_title()

    def start(self, module: str | None, lines: Iterable[dict[str, Any]]) -> None:
        """Show another module's output, starting with its recent lines, and
        follow it: a pause was for the module shown before."""
        self.module = module
        self.problem = ""
        self.following = True
        self._incoming = [log_line(line) for line in lines]
        self._held.clear()
        self._skipped = 0
        self.view.clear()
        self.match = self._line = None
        self.flush()
        self.show_title()

    def add(self, line: dict[str, Any]) -> None:
        self._incoming.append(log_line(line))

    def lost(self, problem: str) -> None:
        self.problem = problem
        self.show_title()

    def flush(self) -> None:
        """Write what came since the last flush, or hold it while paused."""
        if not self._incoming:
            return
        lines, self._incoming = self._incoming, []
        if self.following:
            self.view.write_lines(lines)
            self.written += len(lines)
            # Pinned to the end, even when the view cannot scroll yet; and
            # drawn again, since a full log that drops its oldest lines as it
            # takes new ones does not repaint the lines that moved up.
            self.view.scroll_end(animate=False)
            self.view.refresh()
        else:
            overflow = len(self._held) + len(lines) - LOG_LINES
            if overflow > 0:
                self._skipped += overflow
            self._held.extend(lines)
            self.show_title()

    def set_following(self, following: bool) -> None:
        if following == self.following:
            return
        self.following = following
        if following:
            held = list(self._held)
            self._held.clear()
            if self._skipped:
                self.view.clear()
                held.insert(0, f"... {self._skipped} lines not shown while paused")
                self._skipped = 0
            if held:
                self.view.write_lines(held, scroll_end=True)
                self.written += len(held)
            self.view.scroll_end(animate=False)
        self.show_title()

    def show_title(self) -> None:
        title = Text(no_wrap=True, overflow="crop")
        if self.module is None:
            title.append("no module selected", DIM)
        else:
            module = self.model.modules.get(self.module)
            title.append("logs ", DIM)
            title.append(self.module, BOLD)
            if module is not None:
                title.append(f"  {glyph(module.state)} {module.state}")
            title.append("  ")
            if self.following:
                title.append("following", DIM)
            else:
                held = len(self._held) + self._skipped
                title.append(" PAUSED ", ALERT)
                title.append(f" {held} new; f follows", DIM)
            if self.term:
                found = (
                    f"{self.match + 1}/{self.matches}"
                    if self.match is not None
                    else "none"
                )
                title.append(f"  search {self.term!r}: {found}")
            if self.problem:
                title.append(f"  {self.problem}", ALERT)
        self._heading.update(title, layout=False)

    def search(self, term: str, step: int = 0) -> bool:
        """Show a line with `term`; whether there is one.

        A new term shows the last (newest) match; then `step` 1 goes to the
        next match down and -1 to the one above, wrapping around.
        """
        fresh = term != self.term or self._line is None
        self.term = term
        self.view.set_term(term)
        needle = term.lower()
        found = [
            index
            for index, line in enumerate(self.view.lines)
            if needle and needle in line.lower()
        ]
        self.matches = len(found)
        if not found:
            self.match = self._line = None
            self.show_title()
            return False
        if fresh or step == 0 or self._line is None:
            target = found[-1]
        elif step > 0:
            later = [index for index in found if index > self._line]
            target = later[0] if later else found[0]
        else:
            earlier = [index for index in found if index < self._line]
            target = earlier[-1] if earlier else found[-1]
        self._line = target
        self.match = found.index(target)
        top = max(0, target - self.view.size.height // 2)
        self.view.scroll_to(y=top, animate=False, immediate=True)
        self.show_title()
        return True

    def visible_text(self) -> str:
        """The lines in view: the newest while following, else where it rests."""
        view = self.view
        height = max(1, view.size.height)
        if self.following:
            return "\n".join(view.lines[-height:])
        top = round(view.scroll_offset.y)
        return "\n".join(view.lines[top : top + height])


class SearchInput(Input):
    """A one-line input that any console can draw."""

    DEFAULT_CSS = """
    SearchInput {
        border: none;
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    SearchInput:focus {
        border: none;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    class Cancelled(Message):
        """The person gave up on the input."""

        def __init__(self, input: SearchInput) -> None:
            super().__init__()
            self.input = input

        @property
        def control(self) -> SearchInput:
            return self.input

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled(self))
