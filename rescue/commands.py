"""The rescue shell's commands: each a line of `help`, a usage and a handler.

A handler returns None to stay at the prompt, or the exit status the shell
ends with (`continue`, `reboot`, `poweroff`, `exit`). Every request opens a
connection of its own, so a shell outlives an orchestrator that went away
and came back. Nothing a command does lets a traceback reach the person: the
errors of the socket are said in a line, everything else goes to the log.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from partenza import render
from partenza.client import Client, ClientError, NotRunning
from partenza.errors import did_you_mean
from rescue import terminal
from rescue.report import STAGES, printable

log = logging.getLogger(__name__)

EXIT_OK = 0
LOG_LINES = 20
"""Lines `logs` shows by default: most of a 24-line screen."""
REQUEST_TIMEOUT = 30.0
COMPILE_TIMEOUT = 120.0
"""Seconds to wait for `validate` and `reload`, which compile the plan."""
SETTLE_TIMEOUT = 15.0
"""Seconds `reload` waits for the modules it changed to settle."""

Completes = Literal["module", "command", "file", None]


class Usage(Exception):
    """A command was given the wrong arguments."""


@dataclass(frozen=True)
class Command:
    """One command of the shell."""

    name: str
    args: str
    """Its arguments as `help` shows them: `MODULE [-f] [-n N]`."""
    summary: str
    handler: Callable[[Commands, list[str]], int | None]
    least: int = 0
    most: int | None = 0
    """How many arguments it takes; None for any number."""
    completes: Completes = None
    """What its first argument is, for completion."""

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


COMMANDS: dict[str, Command] = {}
"""Every command, in the order `help` lists them."""


def command(
    name: str,
    args: str,
    summary: str,
    *,
    least: int = 0,
    most: int | None = 0,
    completes: Completes = None,
) -> Callable[[Callable[..., int | None]], Callable[..., int | None]]:
    def register(handler: Callable[..., int | None]) -> Callable[..., int | None]:
        COMMANDS[name] = Command(name, args, summary, handler, least, most, completes)
        return handler

    return register


def group_problems(problems: Iterable[str]) -> list[str]:
    """Problems (`FILE: field: message`) as lines, grouped under their file."""
    lines: list[str] = []
    current = None
    for problem in problems:
        file, sep, rest = problem.partition(": ")
        if not sep:
            current = None
            lines.append(problem)
            continue
        if file != current:
            current = file
            lines.append(f"{file}:")
        lines.append(f"  {rest}")
    return lines


def describe_changes(changes: dict[str, list[str]], verbs: tuple[str, ...]) -> str:
    """`add api; change db`, or an empty string when nothing changes."""
    words = []
    for kind, verb in zip(("added", "removed", "changed"), verbs, strict=True):
        names = changes.get(kind) or []
        if names:
            words.append(f"{verb} {', '.join(names)}")
    return "; ".join(words)


class Commands:
    """The commands, bound to a socket and to where their output goes.

    Args:
        socket: The control socket.
        out: Where command output is written.
        width: Returns the terminal's width in columns.
        bluescreen: The module the shell was opened for, if any.
        settle_mark: Marks the moment before a reload, for `wait_settled`.
        wait_settled: Waits until a reload after the mark has been applied
            and the named modules have settled, or the timeout; returns the
            modules' states as far as known.
    """

    def __init__(
        self,
        socket: Path,
        out: TextIO,
        *,
        width: Callable[[], int] = lambda: 80,
        bluescreen: str | None = None,
        settle_mark: Callable[[], int] | None = None,
        wait_settled: Callable[[list[str], int, float], dict[str, str]] | None = None,
    ) -> None:
        self.socket = socket
        self.out = out
        self.width = width
        self.bluescreen = bluescreen
        self.settle_mark = settle_mark
        self.wait_settled = wait_settled

    # Plumbing.

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def request(
        self, op: str, timeout: float | None = REQUEST_TIMEOUT, **params: Any
    ) -> dict[str, Any]:
        with Client(self.socket, timeout=timeout) as client:
            return client.request(op, **params)

    def dispatch(self, line: str) -> int | None:
        """Run one line typed at the prompt; an exit status ends the shell."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.say(f"rescue: cannot read that line: {exc}")
            return None
        if not words:
            return None
        name, args = words[0], words[1:]
        found = COMMANDS.get(name)
        if found is None:
            guess = did_you_mean(name, COMMANDS)
            hint = f"did you mean {guess!r}?" if guess else "`help` lists the commands"
            self.say(f"rescue: unknown command {name!r} ({hint})")
            return None
        log.info("rescue: %s", line.strip())
        try:
            if len(args) < found.least or (
                found.most is not None and len(args) > found.most
            ):
                raise Usage()
            return found.handler(self, args)
        except Usage as exc:
            detail = f"{exc}; " if str(exc) else ""
            self.say(f"rescue: {name}: {detail}usage: {found.usage}")
        except NotRunning as exc:
            self.say(f"rescue: {name}: the orchestrator is unreachable: {exc.message}")
        except ClientError as exc:
            for problem in group_problems(exc.problems):
                self.say(problem)
            # Hints name CLI commands; here the same commands go without
            # `partenza`.
            self.say(f"rescue: {name}: {str(exc).replace('`partenza ', '`')}")
        except KeyboardInterrupt:
            self.say(f"rescue: {name}: interrupted")
        except Exception as exc:
            log.exception("rescue: %s failed", line.strip())
            self.say(f"rescue: {name} failed: {exc!r} (the rescue log has the details)")
        return None

    def _module(self, name: str) -> dict[str, Any]:
        return self.request("status", module=name)["module"]

    # What is going on.

    @command(
        "status",
        "[MODULE]",
        "the system and its modules, or one module in full",
        most=1,
        completes="module",
    )
    def status(self, args: list[str]) -> None:
        if args:
            self.say(render.module_detail(self._module(args[0])))
            return
        self.say(render.status_table(self.request("status"), self.width()))

    @command(
        "why",
        "MODULE",
        "why a module is in its state, down to the root cause",
        least=1,
        most=1,
        completes="module",
    )
    def why(self, args: list[str]) -> None:
        answer = self.request("why", module=args[0])
        chain = answer["chain"]
        for depth, reason in enumerate(chain):
            self.say(("  " * depth) + ("<- " if depth else "") + printable(reason))
        if answer.get("stays_down"):
            self.say(f"it stays down until started: start {answer['module']}")
        # Each link reads `NAME STATE: reason`; the last is the root cause.
        root = chain[-1].split(" ", 1)[0] if chain else args[0]
        try:
            record = self._module(root)
        except ClientError:
            return
        failure = record.get("failure")
        if not failure:
            return
        stage = failure.get("stage") or "-"
        width = self.width() - 6
        self.say()
        self.say(f"{root} failed for good:")
        self.say(f"  stage:    {stage} ({STAGES.get(stage, 'see its logs')})")
        self.say(f"  error:    {printable(failure.get('error') or '-')}")
        self.say(f"  manifest: {record.get('path') or record.get('file')}")
        logs = render.failure_output(failure)
        if logs:
            self.say("  last output:")
            for mark, text in logs[-5:]:
                self.say(f"  {mark} {printable(text)[:width]}")
        self.say(f"`logs {root}` shows more; `edit {root}` mends it, then `reload`")

    @command(
        "logs",
        "MODULE [-f] [-n N]",
        f"a module's last N ({LOG_LINES}) lines; -f follows them",
        least=1,
        most=None,
        completes="module",
    )
    def logs(self, args: list[str]) -> None:
        module, follow, count = _parse_logs(args)
        client = Client(self.socket, timeout=REQUEST_TIMEOUT)
        try:
            messages = client.stream("logs", module=module, lines=count, follow=follow)
            result = next(messages)
            for line in result["lines"]:
                self.say(printable(render.log_line(line)))
            if not result["lines"] and not follow:
                self.say(f"({module} has written nothing yet)")
            if not follow:
                return
            self.say(f"(following {module}; Ctrl-C returns to the prompt)")
            try:
                for message in messages:
                    if "log" in message:
                        self.say(printable(render.log_line(message["log"])))
            except KeyboardInterrupt:
                # A terminal has echoed ^C where the cursor was.
                if _is_terminal(self.out):
                    self.say()
                self.say(f"(stopped following {module})")
                return
            self.say(f"(the orchestrator ended the log of {module})")
        finally:
            client.close()

    # Steering modules.

    def _control(self, op: str, module: str) -> None:
        result = self.request(op, timeout=None, module=module)
        record = result["module"]
        name, state = record["name"], record["state"]
        self.say(f"{name}: {state} ({printable(record.get('reason') or '')})")
        if not result.get("settled"):
            self.say(f"rescue: {name} has not settled yet; see `logs {name}`")
        elif op != "stop" and state in ("failed", "blocked"):
            self.say(f"rescue: {name} is {state}; see `why {name}`")

    @command(
        "start",
        "MODULE",
        "start a module, and what it requires",
        least=1,
        most=1,
        completes="module",
    )
    def start(self, args: list[str]) -> None:
        self._control("start", args[0])

    @command(
        "stop",
        "MODULE",
        "stop a module, after what requires it",
        least=1,
        most=1,
        completes="module",
    )
    def stop(self, args: list[str]) -> None:
        self._control("stop", args[0])

    @command(
        "restart",
        "MODULE",
        "stop and start a module again, its start limit reset",
        least=1,
        most=1,
        completes="module",
    )
    def restart(self, args: list[str]) -> None:
        self._control("restart", args[0])

    # Mending the plan.

    @command(
        "plan",
        "",
        "the running plan: start order, providers, edges",
    )
    def plan(self, args: list[str]) -> None:
        from partenza.plan import Plan

        data = self.request("plan")
        try:
            compiled = Plan.from_json(data)
        except ValueError as exc:
            self.say(f"rescue: plan: the orchestrator's plan cannot be read: {exc}")
            return
        self.say(render.plan_text(compiled, self.width()))

    def _show_validation(self, result: dict[str, Any]) -> bool:
        """Say what `validate` found; whether the plan is valid."""
        if not result.get("valid"):
            problems = result.get("problems") or []
            for line in group_problems(problems):
                self.say(printable(line))
            count = len(problems)
            self.say(
                f"the plan has {count} problem{'s' if count != 1 else ''}: "
                "`reload` would refuse it and change nothing"
            )
            return False
        for note in result.get("notes") or []:
            self.say(f"note: {printable(note)}")
        changes = describe_changes(
            result.get("changes") or {}, ("add", "remove", "change")
        )
        if changes:
            self.say(f"the plan is valid; `reload` would {changes}")
        else:
            self.say("the plan is valid; it is the one running: nothing would change")
        return True

    @command(
        "validate",
        "",
        "check the plan folder and show what `reload` changes",
    )
    def validate(self, args: list[str]) -> None:
        self._show_validation(self.request("validate", timeout=COMPILE_TIMEOUT))

    @command(
        "edit",
        "MODULE|FILE",
        "edit a module's manifest in $EDITOR, then validate",
        least=1,
        most=1,
        completes="module",
    )
    def edit(self, args: list[str]) -> None:
        target = args[0]
        if "/" in target or target.endswith(".toml"):
            path = Path(target).expanduser()
        else:
            record = self._module(target)
            path = Path(record.get("path") or record["file"])
        argv, note = terminal.editor_command(str(path))
        if argv is None:
            self.say(
                f"rescue: edit: {note + '; ' if note else ''}no editor found: "
                "set EDITOR, or install vi or nano"
            )
            return
        if note:
            self.say(f"rescue: edit: {note}; using {argv[0]}")
        before = _read(path)
        try:
            code = terminal.run_foreground(argv)
        except OSError as exc:
            self.say(f"rescue: edit: cannot start {argv[0]}: {exc.strerror or exc}")
            return
        after = _read(path)
        if code != 0:
            self.say(f"rescue: edit: {Path(argv[0]).name} exited {_status(code)}")
        self.say(f"{path}: {'unchanged' if after == before else 'saved'}")
        valid = self._show_validation(self.request("validate", timeout=COMPILE_TIMEOUT))
        if valid and after != before:
            self.say("`reload` applies it")

    @command(
        "reload",
        "",
        "compile the plan folder again and apply what changed",
    )
    def reload(self, args: list[str]) -> None:
        mark = self.settle_mark() if self.settle_mark is not None else 0
        result = self.request("reload", timeout=COMPILE_TIMEOUT)
        for note in result.get("notes") or []:
            self.say(f"note: {printable(note)}")
        changes = result.get("changes") or {}
        words = describe_changes(changes, ("added", "removed", "changed"))
        self.say(f"reloaded: {words or 'nothing changed'}")
        moving = [*changes.get("added", []), *changes.get("changed", [])]
        if moving and self.wait_settled is not None:
            states = self.wait_settled(moving, mark, SETTLE_TIMEOUT)
            for name in moving:
                self.say(f"  {name}: {states.get(name, 'unknown')}")

    # Leaving.

    @command(
        "continue",
        "",
        "resume the boot and give the console back",
    )
    def resume(self, args: list[str]) -> int:
        system = self.request("continue")["system"]
        if system["state"] == "rescue":
            # The reply may come before the orchestrator has moved on.
            system = self.request("status")["system"]
        self.say(
            f"resuming the boot: {system['plan']} is "
            f"{'in rescue' if system['state'] == 'rescue' else system['state']} "
            f"({printable(system.get('reason') or '')})"
        )
        return EXIT_OK

    @command(
        "sh",
        "",
        "a shell ($SHELL) here; its `exit` comes back here",
    )
    def sh(self, args: list[str]) -> None:
        argv = terminal.shell_command()
        self.say(f"starting {argv[0]}; leave it with `exit` to come back here")
        started = time.monotonic()
        try:
            code = terminal.run_foreground(argv)
        except OSError as exc:
            self.say(f"rescue: sh: cannot start {argv[0]}: {exc.strerror or exc}")
            return
        took = time.monotonic() - started
        log.info("rescue: %s exited %s after %.1fs", argv[0], code, took)
        self.say(f"back in the rescue shell ({argv[0]} exited {_status(code)})")

    def _shutdown(self, action: str, doing: str) -> int:
        self.request("shutdown", action=action, reason=f"rescue shell: {action}")
        self.say(f"{doing}: every module is being stopped")
        return EXIT_OK

    @command("reboot", "", "stop every module, then reboot")
    def reboot(self, args: list[str]) -> int:
        return self._shutdown("reboot", "rebooting")

    @command("poweroff", "", "stop every module, then power off")
    def poweroff(self, args: list[str]) -> int:
        return self._shutdown("poweroff", "powering off")

    @command(
        "help",
        "[COMMAND]",
        "every command, or one in full",
        most=1,
        completes="command",
    )
    def help(self, args: list[str]) -> None:
        if args:
            found = COMMANDS.get(args[0])
            if found is None:
                guess = did_you_mean(args[0], COMMANDS)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                self.say(f"rescue: help: unknown command {args[0]!r}{hint}")
                return
            self.say(f"usage: {found.usage}")
            self.say(f"  {found.summary}")
            return
        column = max(len(c.usage) for c in COMMANDS.values()) + 2
        for found in COMMANDS.values():
            self.say(f"  {found.usage.ljust(column)}{found.summary}")
        self.say(
            "Tab completes commands and modules; Up and Down recall earlier lines;"
        )
        self.say(
            "Ctrl-C clears the line, or stops what runs (`logs -f`, a long start)."
        )

    @command(
        "exit",
        "",
        "leave the rescue shell; the system stays as it is",
    )
    def leave(self, args: list[str]) -> int:
        if self.bluescreen:
            self.say(
                "leaving the rescue shell; the system stays in rescue until "
                "`continue` (`partenza rescue` opens the shell again)"
            )
        return EXIT_OK


def _parse_logs(args: list[str]) -> tuple[str, bool, int]:
    """`MODULE [-f] [-n N]` into the module, follow and the line count."""
    module = None
    follow = False
    count = LOG_LINES
    words = iter(args)
    for word in words:
        if word in ("-f", "--follow"):
            follow = True
        elif word in ("-n", "--lines") or word.startswith("-n"):
            value = word[2:] if word.startswith("-n") and word != "-n" else None
            if value is None:
                value = next(words, None)
            if value is None:
                raise Usage("-n takes a count")
            try:
                count = int(value)
            except ValueError:
                raise Usage(f"-n takes a count, got {value!r}") from None
            if count < 0:
                raise Usage(f"-n takes a count of 0 or more, got {count}")
        elif word.startswith("-"):
            raise Usage(f"unknown option {word!r}")
        elif module is None:
            module = word
        else:
            raise Usage(f"one module at a time, got {module!r} and {word!r}")
    if module is None:
        raise Usage("which module?")
    return module, follow, count


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _status(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"on {signal.Signals(-code).name}"
        except ValueError:
            return f"on signal {-code}"
    return str(code)
