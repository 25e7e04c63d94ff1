"""`partenza boot PLAN`: read the plan, open the control socket, supervise.

This is the path from a command line (or the kernel) to a running system. It
imports neither Textual nor prompt-toolkit, and on a cached plan not even
pydantic.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import logging.handlers
import os
import resource
import signal
import sys
import termios
import time
from pathlib import Path
from typing import Any, TextIO

from partenza import __version__
from partenza.api import ControlServer
from partenza.cache import load_plan
from partenza.console import Console
from partenza.errors import PartenzaError
from partenza.orchestrator import Orchestrator
from partenza.paths import which
from partenza.pid1 import ACTIONS as PID1_ACTIONS
from partenza.pid1 import (
    PID1_SIGNALS,
    console_terminal,
    ctrl_alt_del_signals,
    finish,
    in_container,
    is_pid1,
    loopback_up,
    mount_missing,
    open_console,
)
from partenza.plan import Plan
from partenza.process import signal_group
from partenza.render import status_table
from partenza.seat import Seat, find_terminal
from partenza.units import plural

log = logging.getLogger("partenza")

EXIT_PLAN_INVALID = 1
EXIT_CANNOT_BOOT = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _ConsoleHandler(logging.Handler):
    """Puts the orchestrator's warnings on the console as WARN lines."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.line("warn", f"partenza: {record.getMessage()}")


def _setup_logging(state_dir: Path, console: Console) -> None:
    root = logging.getLogger("partenza")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ConsoleHandler(console))
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            state_dir / "orchestrator.log", maxBytes=4 * 1024 * 1024, backupCount=2
        )
    except OSError as exc:
        console.line(
            "warn", f"partenza: cannot open {state_dir}/orchestrator.log: {exc}"
        )
        return
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)


def _lock_state(state_dir: Path) -> int | str | None:
    """Take the state folder for this orchestrator alone; None if another has
    it, or why it cannot be used.

    The lock is held until the process ends (or executes itself again).
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _raise_file_limit() -> None:
    """Let the orchestrator open as many files as it may: every module takes
    three (two pipes and its log file), and 1024 is a common soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard
    if hard == resource.RLIM_INFINITY:
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


def boot(
    plan_dir: Path,
    *,
    state_dir: Path,
    socket: Path,
    use_cache: bool = True,
    as_pid1: bool | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Boot the plan in `plan_dir` and supervise it until it is shut down.

    Args:
        as_pid1: Do PID 1's duties; by default when this process is PID 1.

    Returns:
        The exit status for the command: 0 after an orderly shutdown, the main
        module's own status when the plan names one. On a machine that this
        process boots as its init, it does not return: it powers off or
        reboots.
    """
    pid1 = is_pid1() if as_pid1 is None else as_pid1
    machine = pid1 and is_pid1() and not in_container()
    if machine:
        # The kernel's init: make the system usable before anything else.
        mount_missing()
        open_console()
        ctrl_alt_del_signals()
        loopback_up()
    console = Console(out)
    try:
        lock = _lock_state(state_dir)
        if lock is None:
            console.line(
                "failed",
                f"partenza: another orchestrator uses the state folder {state_dir} "
                "(set PARTENZA_STATE_DIR to another one)",
            )
            return EXIT_CANNOT_BOOT
        if isinstance(lock, str):
            # Without it: no log files, no plan cache, and nothing keeps a
            # second orchestrator off. PID 1 boots regardless.
            problem = f"cannot use the state folder {state_dir}: {lock}"
            if not pid1:
                console.line(
                    "failed",
                    f"partenza: {problem} (set PARTENZA_STATE_DIR or --state-dir "
                    "to a folder you may write)",
                )
                return EXIT_CANNOT_BOOT
            console.line("warn", f"partenza: {problem}; booting without it")
        _setup_logging(state_dir, console)
        _raise_file_limit()

        # Read the plan, from the cache when no manifest changed.
        started = time.monotonic()
        try:
            plan, cached = load_plan(plan_dir, state_dir, use_cache=use_cache)
        except PartenzaError as exc:
            problems = getattr(exc, "problems", [])
            for problem in problems:
                console.line("failed", str(problem))
            console.line("failed", f"partenza: cannot boot {plan_dir}: {exc}")
            if machine:
                console.close()
                emergency(f"the plan {plan_dir} cannot boot: {exc}")
            return EXIT_PLAN_INVALID
        took = time.monotonic() - started
        _announce(console, plan, plan_dir, cached, took, socket, state_dir)
        fallback = _fallback_plan(plan, state_dir, console, use_cache)

        # Supervise until a shutdown has run its course.
        try:
            code, action = asyncio.run(
                _run(plan, str(plan_dir), console, state_dir, socket, fallback, pid1)
            )
        except BaseException as exc:
            if not pid1:
                raise
            # PID 1 never dies of its own error: say what broke, and keep
            # the machine in hand.
            console.line("failed", f"partenza: the orchestrator failed: {exc!r}")
            log.exception("the orchestrator failed")
            console.close()
            if machine:
                emergency(f"the orchestrator failed: {exc!r}")
            return EXIT_CANNOT_BOOT
    finally:
        console.close()

    # Then what the shutdown asked for.
    if machine:
        finish(action if action in ("poweroff", "reboot", "halt") else "poweroff")
        emergency("reboot(2) was refused")
    if action == "reboot":
        log.info("booting again")
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return code


def emergency(reason: str) -> None:
    """The last resort of a machine's init: a shell on the console, then off.

    Runs when the orchestrator cannot: the plan does not compile, or the
    orchestrator broke. It keeps reaping, and powers off when the shell ends.
    """
    terminal = console_terminal() or "/dev/console"
    os.write(
        2,
        f"\npartenza: {reason}\npartenza: emergency shell on {terminal}; "
        "exit it to power off\n".encode(),
    )
    shell = which("sh")
    pid = os.fork() if shell else 0
    if shell and pid == 0:
        os.setsid()
        fd = os.open(terminal, os.O_RDWR)
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSCTTY, 1)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.execv(shell, [shell])
    while shell:
        try:
            ended, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if ended == pid:
            break
    finish("poweroff")
    while True:
        signal.pause()


def _fallback_plan(
    plan: Plan, state_dir: Path, console: Console, use_cache: bool
) -> Plan | None:
    """The fallback plan, compiled now: better to learn at boot that it is broken."""
    if plan.fallback is None:
        return None
    try:
        fallback, _ = load_plan(Path(plan.fallback), state_dir, use_cache=use_cache)
    except PartenzaError as exc:
        for problem in getattr(exc, "problems", []):
            console.line("warn", str(problem))
        console.line(
            "warn", f"partenza: the fallback plan {plan.fallback} cannot be used: {exc}"
        )
        return None
    console.line("info", f"fallback plan: {fallback.name} ({plan.fallback})")
    return fallback


def _announce(
    console: Console,
    plan: Plan,
    plan_dir: Path,
    cached: bool,
    took: float,
    socket: Path,
    state_dir: Path,
) -> None:
    source = "cached plan" if cached else "compiled"
    count = len(plan.modules)
    console.write(
        f"Partenza {__version__}: booting {plan.name} from {plan_dir} "
        f"({plural(count, 'module')}, {plural(len(plan.waves), 'wave')}; "
        f"{source} in {took * 1000:.0f}ms)\n"
    )
    console.write(f"control socket {socket}; logs in {state_dir / 'logs'}\n")
    console.plan = plan.name
    for note in plan.notes:
        console.line("info", str(note))


async def _run(
    plan: Plan,
    source: str,
    console: Console,
    state_dir: Path,
    socket: Path,
    fallback: Plan | None,
    pid1: bool,
) -> tuple[int, str]:
    orchestrator = Orchestrator(
        plan,
        state_dir=state_dir,
        source=source,
        runtime_dir=socket.parent,
        fallback=fallback,
    )
    orchestrator.pid1 = pid1
    orchestrator.bus.subscribe(console)
    orchestrator.console_line = console.line
    tty = plan.console.tty or (console_terminal() if pid1 else None)
    seat = Seat(orchestrator, console, socket, find_terminal(tty))
    seat.attach()
    server = ControlServer(orchestrator, socket)
    try:
        await server.start()
    except PartenzaError as exc:
        console.line("failed", f"partenza: {exc}")
        return EXIT_CANNOT_BOOT, "exit"
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: _internal_error(console, context))

    # As PID 1: SIGTERM powers off, SIGINT (Ctrl-Alt-Del) reboots, SIGHUP
    # reloads. Otherwise Ctrl-C, SIGTERM and a closed terminal (SIGHUP) shut
    # the plan down in order, and a second signal hurries it.
    interrupts = 0
    reloading: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        if pid1 and signum == signal.SIGHUP:
            task = loop.create_task(_reload(orchestrator, console))
            reloading.add(task)
            task.add_done_callback(reloading.discard)
            return
        if not pid1 and signum == signal.SIGUSR1:
            console.write(
                status_table(orchestrator.snapshot(), console.width or 80) + "\n"
            )
            return
        if not pid1 and signum == signal.SIGUSR2:
            _reopen_logs()
            console.line("info", "partenza: log files reopened (SIGUSR2)")
            return
        interrupts += 1
        if interrupts > 1:
            # The latest request says how it ends: a power-off asked for
            # during a hung reboot powers off.
            wanted = PID1_ACTIONS[signum][0] if pid1 else None
            if wanted is not None and wanted != orchestrator.action:
                console.line(
                    "warn",
                    f"partenza: {PID1_ACTIONS[signum][1]}: {wanted} instead of "
                    f"{orchestrator.action}",
                )
                orchestrator.action = wanted
            console.line("warn", "partenza: signalled again: killing every module now")
            for unit in orchestrator.units.values():
                if unit.child is not None:
                    signal_group(unit.child.pgid, signal.SIGKILL)
            return
        if pid1:
            action, reason = PID1_ACTIONS[signum]
            orchestrator.shutdown(reason, action=action)
            return
        reason = {signal.SIGINT: "Ctrl-C", signal.SIGHUP: "terminal closed"}.get(
            signal.Signals(signum), signal.Signals(signum).name
        )
        orchestrator.shutdown(reason)

    if not pid1:
        seat.on_hangup = lambda: orchestrator.shutdown("terminal closed")
    handled = PID1_SIGNALS if pid1 else (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        code = await orchestrator.run()
    finally:
        await server.close()
        for signum in handled:
            loop.remove_signal_handler(signum)
    console.line("ok", f"{orchestrator.plan.name}: every module stopped")
    return code, orchestrator.action


async def _reload(orchestrator: Orchestrator, console: Console) -> None:
    """SIGHUP to PID 1: compile the plan folder again and apply what changed."""
    from partenza.errors import PlanError
    from partenza.plan import compile_plan

    try:
        plan = await asyncio.to_thread(compile_plan, orchestrator.source)
    except PlanError as exc:
        for problem in exc.problems:
            console.line("warn", str(problem))
        console.line("warn", f"partenza: reload refused, nothing changed: {exc}")
        return
    changes = orchestrator.reload(plan)
    words = [f"{kind} {', '.join(names)}" for kind, names in changes.items() if names]
    console.line(
        "info", "partenza: reloaded: " + ("; ".join(words) or "nothing changed")
    )


def _reopen_logs() -> None:
    for handler in logging.getLogger("partenza").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def _internal_error(console: Console, context: dict[str, Any]) -> None:
    """An exception nobody caught in the loop: say so, and go on."""
    error = context.get("exception")
    message = context.get("message", "an error")
    log.error("internal error: %s", message, exc_info=error)
    console.line("failed", f"partenza: internal error: {message}: {error!r}; going on")
