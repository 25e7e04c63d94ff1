"""The rescue shell: the bluescreen report, root's password, then the prompt.

`run` is what `partenza rescue [--bluescreen MODULE]` calls. With a module it
first draws the bluescreen (`rescue.report`); then, unless the plan says
`[rescue] shell = false`, it asks for root's password when it runs as root
(`rescue.auth`) and opens the prompt. The prompt shows the system's state as
the event stream tells it (`rescue (degraded)> `), completes commands and
module names, and keeps its history in `rescue_history` in the state folder.
It is made for a serial console: no mouse, no colour under NO_COLOR, no
cursor-position requests, completions listed readline-style below the line.

Keys: Tab completes, Up and Down recall, Ctrl-C clears the line or stops what
runs (`logs -f`, a start that waits). Ctrl-D on an empty line leaves a shell
opened with `partenza rescue`; on the bluescreen it only says how to leave.

Exit status: 0 once the boot is resumed (`continue`), a reboot or poweroff is
on its way, or the person left (`exit`, or the terminal closed); 1 when the
shell was refused (password, or an empty one the plan refuses).

Files, in the state folder (`PARTENZA_STATE_DIR`): `rescue_history`, and
`rescue.log`, where every command, password failure and exit is written.
The environment: `EDITOR` for `edit` (else vi, then nano), `SHELL` for `sh`
(else /bin/sh), `TERM` (vt100 when unset), `NO_COLOR`, and
`PARTENZA_RESCUE_SHADOW` (see `rescue.auth`).
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from prompt_toolkit.shortcuts import CompleteStyle

from partenza.client import Client, ClientError
from rescue import auth, terminal
from rescue.commands import COMMANDS, EXIT_OK, Commands
from rescue.report import bluescreen as bluescreen_report
from rescue.watch import Watcher

log = logging.getLogger(__name__)

EXIT_REFUSED = 1
HISTORY_FILE = "rescue_history"
LOG_FILE = "rescue.log"
HISTORY_LINES = 1000
"""Entries of history kept in the file."""
RESTING = frozenset({"ready", "failed", "blocked", "stopped", "inactive"})
"""States a module may stay in; the others lead on by themselves."""
QUIET = 0.3
"""Seconds without a change after which a resting module counts as settled."""
CTRL_D = "\x04"
FOLLOWING_LINES = 3
"""Lines the shell writes under the bluescreen before its first prompt."""
RESUMED = "\x00resumed"
"""What the prompt returns when the boot was resumed from another shell."""
"""What the prompt returns for Ctrl-D on an empty line."""
CLEAR = "\x1b[H\x1b[2J"
"""Cursor home and erase the screen: understood by a vt100 and all after it."""


class RescueCompleter(Completer):
    """Completes command names, then module names, commands or options."""

    def __init__(self, modules: Callable[[], dict[str, str]]) -> None:
        self.modules = modules
        """Returns each module's name to its state."""

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        words = before.split()
        # The word under the cursor, and the complete words before it.
        word = words.pop() if words and not before.endswith(" ") else ""
        if not words:
            yield from self._choices(word, {name: "" for name in COMMANDS}, "command")
            return
        found = COMMANDS.get(words[0])
        if found is None:
            return
        if len(words) == 1 and found.completes == "module":
            yield from self._choices(word, self.modules(), "module")
        elif len(words) == 1 and found.completes == "command":
            yield from self._choices(word, {name: "" for name in COMMANDS}, "command")
        elif found.name == "logs" and word.startswith("-"):
            yield from self._choices(word, {"-f": "follow", "-n": "lines"}, "option")

    def _choices(
        self, word: str, names: dict[str, str], kind: str
    ) -> Iterable[Completion]:
        for name in sorted(names):
            if name.startswith(word):
                yield Completion(
                    name + " ",
                    start_position=-len(word),
                    display=name,
                    display_meta=names[name] or kind,
                )


class RescueShell:
    """One rescue shell on one terminal, or on the given input and output.

    Args:
        socket: The control socket.
        bluescreen: The failed module to draw the report for first, or None.
        input: prompt-toolkit's input; None for this terminal.
        output: prompt-toolkit's output; None for this terminal.
        stdout: Where command output goes; None for `sys.stdout`.
        history: The history file; None keeps the history in memory only.
        authenticate: Ask for root's password; None asks when running as root.
        shadow: The shadow file for the password; None for `auth.shadow_path()`.
        fail_delay: Seconds to wait after a wrong password.
    """

    def __init__(
        self,
        socket: Path | str,
        *,
        bluescreen: str | None = None,
        input: Input | None = None,
        output: Output | None = None,
        stdout: TextIO | None = None,
        history: Path | None = None,
        authenticate: bool | None = None,
        shadow: Path | str | None = None,
        fail_delay: float = auth.FAIL_DELAY,
    ) -> None:
        self.socket = Path(socket)
        self.bluescreen = bluescreen
        self.out = stdout or sys.stdout
        self.authenticate = os.geteuid() == 0 if authenticate is None else authenticate
        self.shadow = shadow
        self.fail_delay = fail_delay
        self._input = input
        self._output = output
        self._settled = threading.Condition()
        self.watcher = Watcher(self.socket, on_change=self._changed)
        self.commands = Commands(
            self.socket,
            self.out,
            width=self.width,
            bluescreen=bluescreen,
            settle_mark=self.settle_mark,
            wait_settled=self.wait_settled,
        )
        self.session: PromptSession[str] = PromptSession(
            message=self.prompt_text,
            history=self._history(history),
            completer=RescueCompleter(lambda: self.watcher.modules),
            complete_style=CompleteStyle.READLINE_LIKE,
            complete_while_typing=False,
            mouse_support=False,
            enable_suspend=False,
            key_bindings=self._bindings(),
            input=input,
            output=output,
        )
        self._reachable = True
        self._started = False

    # The pieces.

    def _history(self, path: Path | None) -> History:
        if path is None:
            return InMemoryHistory()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _trim(path, HISTORY_LINES)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        except OSError as exc:
            self.say(
                f"rescue: history is kept in memory only: cannot write {path}: "
                f"{exc.strerror or exc}"
            )
            return InMemoryHistory()
        return FileHistory(str(path))

    def _bindings(self) -> KeyBindings:
        bindings = KeyBindings()

        @bindings.add("c-d")
        def _(event: KeyPressEvent) -> None:
            buffer = event.current_buffer
            if buffer.text:
                buffer.delete()
            else:
                event.app.exit(result=CTRL_D)

        return bindings

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def width(self) -> int:
        try:
            return self.session.output.get_size().columns or 80
        except Exception:
            return 80

    def prompt_text(self) -> str:
        """`rescue (degraded)> `: the system's state as last heard."""
        watcher = self.watcher
        system = watcher.system
        if system is None or not watcher.reachable:
            return "rescue (unreachable)> "
        if system["state"] == "rescue" and system.get("rescue"):
            return f"rescue ({system['rescue']} failed)> "
        return f"rescue ({system['state']})> "

    def _changed(self) -> None:
        with self._settled:
            self._settled.notify_all()
        app = self.session.app
        if not app.is_running:
            return
        if self._resumed_elsewhere():
            loop = app.loop
            if loop is not None:
                loop.call_soon_threadsafe(self._leave_prompt)
        app.invalidate()

    def _resumed_elsewhere(self) -> bool:
        """Whether another shell resumed the boot, so this console shell (the
        bluescreen's) must give the console back."""
        by = self.watcher.resumed_by
        return bool(self.bluescreen) and by is not None and by != os.getpid()

    def _leave_prompt(self) -> None:
        app = self.session.app
        future = app.future
        if app.is_running and future is not None and not future.done():
            app.exit(result=RESUMED)

    def settle_mark(self) -> int:
        """A mark to pass to `wait_settled`, taken before a reload."""
        return self.watcher.reloads

    def wait_settled(
        self, names: list[str], mark: int, timeout: float
    ) -> dict[str, str]:
        """Wait until a reload after `mark` has been told of and `names` rest.

        A module rests when it is ready, failed, blocked, stopped or inactive
        and its state has not changed for `QUIET` seconds (a restart passes
        through stopped). Returns each module's state as last heard.
        """
        watcher = self.watcher
        deadline = time.monotonic() + timeout
        with self._settled:
            while watcher.connected:
                now = time.monotonic()
                if now >= deadline:
                    break
                if watcher.reloads > mark and all(
                    watcher.modules.get(name) in RESTING
                    and now - watcher.touched.get(name, 0.0) >= QUIET
                    for name in names
                ):
                    break
                self._settled.wait(min(QUIET / 2, deadline - now))
        return dict(watcher.modules)

    # The steps.

    def main(self) -> int:
        """Report, authenticate, then run the prompt; the exit status."""
        # Ask the orchestrator what it knows: the state, the plan's settings.
        snapshot, settings, problem = self._fetch()
        self._reachable = snapshot is not None
        # Draw the bluescreen, for a module the plan has.
        if self.bluescreen:
            names = [m["name"] for m in snapshot["modules"]] if snapshot else []
            if snapshot is not None and self.bluescreen not in names:
                guess = difflib.get_close_matches(self.bluescreen, names, n=1)
                hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                self.say(f"rescue: the plan has no module {self.bluescreen!r}{hint}")
                return EXIT_REFUSED
            self.show_report(snapshot, problem)
            if settings.get("shell") is False:
                self.say(
                    "rescue: the plan has [rescue] shell = false: no shell is "
                    "opened here; `partenza rescue` opens one from a terminal"
                )
                return EXIT_OK
        # Say first that nobody answers: the password is asked all the same,
        # under the strictest setting, as the plan's cannot be read.
        if snapshot is None:
            self.say(f"rescue: {problem}; `sh` and `edit FILE` work without it")
        # Check root's password.
        if self.authenticate and not self.login(
            settings.get("empty_password", "refuse")
        ):
            return EXIT_REFUSED
        # Open the prompt.
        if snapshot is not None and not self.bluescreen:
            system = snapshot["system"]
            state = _state_words(system["state"])
            self.say(f"{system['plan']} is {state} ({system['reason']})")
        self.say("Partenza rescue shell: `help` lists the commands.")
        return self.loop()

    def _fetch(self) -> tuple[dict[str, Any] | None, dict[str, Any], str | None]:
        try:
            with Client(self.socket, timeout=10.0) as client:
                snapshot = client.request("status")
                settings = client.request("plan").get("rescue") or {}
        except ClientError as exc:
            log.warning("rescue: %s", exc.message)
            return None, {}, f"the orchestrator is unreachable: {exc.message}"
        self.watcher.seed(snapshot)
        return snapshot, settings, None

    def show_report(
        self, snapshot: dict[str, Any] | None, problem: str | None = None
    ) -> None:
        """Clear the screen and draw the bluescreen of `self.bluescreen`."""
        module = self.bluescreen or ""
        record = None
        if snapshot is not None:
            record = next((m for m in snapshot["modules"] if m["name"] == module), None)
            if record is None:
                problem = f"the plan has no module {module!r}"
        size = self.session.output.get_size()
        lines = bluescreen_report(
            record,
            snapshot["system"] if snapshot else None,
            module=module,
            width=size.columns,
            # Room for what follows it: the password's line, the banner and
            # the prompt, so that its title stays on the screen.
            height=max(12, size.rows - FOLLOWING_LINES),
            problem=problem,
        )
        if _is_terminal(self.out) and os.environ.get("TERM") != "dumb":
            self.out.write(CLEAR)
        self.say("\n".join(lines))

    def login(self, empty_password: str) -> bool:
        """Ask for root's password; whether the shell may open."""
        asker: PromptSession[str] = PromptSession(
            input=self._input, output=self._output, mouse_support=False
        )
        where = terminal.stdin_device() or "no terminal"
        return auth.login(
            lambda text: asker.prompt(text, is_password=True),
            self.say,
            empty_password=empty_password,
            shadow=self.shadow,
            delay=self.fail_delay,
            where=where,
        )

    def loop(self) -> int:
        """Prompt and run commands until one ends the shell."""
        self.start()
        while True:
            try:
                code = self.step()
            except KeyboardInterrupt:
                continue
            if code is not None:
                return code

    def start(self) -> None:
        """Follow the event stream for the prompt and the completer."""
        if not self._started:
            self.watcher.start()
            self.watcher.wait_heard(2.0)
            self._started = True

    def step(self) -> int | None:
        """One prompt, one command; the exit status when the shell should end."""
        self._say_reachability()
        if self._resumed_elsewhere():
            return self._given_back()
        try:
            line = self.session.prompt()
        except KeyboardInterrupt:
            return None
        except EOFError:
            log.info("rescue: the terminal's input closed")
            return EXIT_OK
        if line == RESUMED:
            return self._given_back()
        if line == CTRL_D:
            if self.bluescreen:
                self.say(
                    "rescue: Ctrl-D does not leave the rescue shell here: "
                    "`continue` resumes the boot, `exit` leaves"
                )
                return None
            return EXIT_OK
        return self.commands.dispatch(line)

    def _given_back(self) -> int:
        system = self.watcher.system or {}
        self.say(
            f"rescue: the boot was resumed elsewhere (pid {self.watcher.resumed_by});"
            f" the console goes back to the boot ({system.get('plan', 'the plan')} "
            f"is {_state_words(system.get('state', 'unknown'))})"
        )
        return EXIT_OK

    def _say_reachability(self) -> None:
        if not self._started:
            return
        reachable = self.watcher.reachable
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            self.say("rescue: the orchestrator answers again")
        else:
            self.say(
                f"rescue: lost the connection to the orchestrator "
                f"({self.watcher.error}); `sh` and `edit FILE` still work"
            )

    def close(self) -> None:
        self.watcher.stop()


def _trim(path: Path, lines: int) -> None:
    """Keep the last `lines` entries of a history file."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    entries = text.split("\n\n")
    if len(entries) > lines:
        path.write_text("\n\n".join(entries[-lines:]))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _log_to(folder: Path) -> None:
    """Log the shell's doings to `rescue.log` in `folder`, else to stderr."""
    logger = logging.getLogger("rescue")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler: logging.Handler = logging.FileHandler(folder / LOG_FILE)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
    handler.setFormatter(
        logging.Formatter("%(asctime)s pid %(process)d %(levelname)s %(message)s")
    )
    logger.addHandler(handler)


def _settle_signals() -> None:
    """Ctrl-C interrupts; Ctrl-Z and Ctrl-\\ do nothing to the shell itself.

    The orchestrator may start the shell with signals ignored; it must get
    Ctrl-C back. Nobody could resume a stopped rescue shell, so SIGTSTP gets a
    handler that does nothing (a handler, not SIG_IGN: programs the shell
    starts get the default again).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTSTP, lambda signum, frame: None)
    signal.signal(signal.SIGQUIT, lambda signum, frame: None)


def run(
    socket_path: Path | str,
    bluescreen: str | None = None,
    state_dir: Path | str | None = None,
) -> int:
    """Open the rescue shell on this terminal; its exit status.

    Args:
        socket_path: The orchestrator's control socket.
        bluescreen: The critical module that failed: draw its report first.
        state_dir: Where the history and the log go; None for the default
            state folder (`PARTENZA_STATE_DIR`).
    """
    from partenza import paths

    terminal.prepare_environment()
    _settle_signals()
    folder = Path(state_dir) if state_dir is not None else paths.state_dir()
    _log_to(folder)
    log.info(
        "rescue: shell opened on %s by uid %d%s",
        terminal.stdin_device() or "no terminal",
        os.getuid(),
        f" for {bluescreen}" if bluescreen else "",
    )
    shell = None
    try:
        shell = RescueShell(
            socket_path, bluescreen=bluescreen, history=folder / HISTORY_FILE
        )
        code = shell.main()
    except Exception as exc:
        log.exception("rescue: the shell failed")
        sys.stderr.write(
            f"rescue: the shell failed: {exc!r} (see {folder / LOG_FILE})\n"
        )
        code = EXIT_REFUSED
    finally:
        if shell is not None:
            shell.close()
    log.info("rescue: shell closed with %d", code)
    return code


def _state_words(state: str) -> str:
    """A system state as it reads after `is`: `running`, `in rescue`."""
    return "in rescue" if state == "rescue" else state
