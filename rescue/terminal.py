"""The terminal the shell runs on: serial consoles, and lending it to children.

A serial console answers no cursor-position request, so prompt-toolkit must
not send one (`PROMPT_TOOLKIT_NO_CPR=1`). A program the shell starts (`sh`, an
editor) gets the terminal as a job of its own: its own process group, made the
terminal's foreground group, so that Ctrl-C and Ctrl-Z reach it and not the
rescue shell; once it has ended the shell takes the terminal back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import termios
from collections.abc import Iterator, MutableMapping

from partenza.process import sigttou_blocked

log = logging.getLogger(__name__)

EDITORS = ("vi", "nano")
"""Tried in this order when `$EDITOR` is not set or not installed."""


def stdin_device() -> str | None:
    """The device standard input is, like `/dev/ttyS0`; None if not a terminal."""
    try:
        if not os.isatty(0):
            return None
    except OSError:
        return None
    # After devtmpfs is mounted over /dev, ttyname() may fail; the link of
    # the descriptor still names the device.
    try:
        return os.readlink("/proc/self/fd/0")
    except OSError:
        pass
    try:
        return os.ttyname(0)
    except OSError:
        return None


def prepare_environment(env: MutableMapping[str, str] | None = None) -> None:
    """Set up `env` (default: `os.environ`) for a console that may be serial.

    Without `TERM` the terminal is taken for a vt100. prompt-toolkit is told
    not to ask for the cursor position (`PROMPT_TOOLKIT_NO_CPR=1`): a serial
    line or a plain console would never answer, and a shell whose completions
    are listed as readline lists them has no use for the answer anyway.
    """
    env = os.environ if env is None else env
    if not env.get("TERM"):
        env["TERM"] = "vt100"
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"


def controlling_fd() -> int | None:
    """Standard input, if it is the terminal whose foreground group we are."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _give(fd: int, pgid: int) -> bool:
    with sigttou_blocked():
        try:
            os.tcsetpgrp(fd, pgid)
        except OSError as exc:
            log.debug("rescue: cannot give the terminal to %d: %s", pgid, exc)
            return False
    return True


def run_foreground(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run `argv` as the terminal's foreground job; its exit status.

    A negative status is the signal that ended it. Without a terminal of ours
    the program simply runs, with Ctrl-C ignored by the shell meanwhile.

    Raises:
        OSError: the program cannot be started.
    """
    fd = controlling_fd()
    if fd is None:
        child = subprocess.Popen(argv, env=env)
        with _ignoring(signal.SIGINT, signal.SIGQUIT):
            return child.wait()
    saved = termios.tcgetattr(fd)
    # Start it in a group of its own, then hand that group the terminal. A
    # shell that looked at the terminal before it was its own stops itself
    # with SIGTTIN; SIGCONT wakes it once it is.
    child = subprocess.Popen(argv, env=env, process_group=0)
    try:
        _give(fd, child.pid)
        _continue(child.pid)
        status = _wait(child, fd)
    finally:
        _give(fd, os.getpgrp())
        with sigttou_blocked(), contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return status


def _continue(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGCONT)


def _wait(child: subprocess.Popen[bytes], fd: int) -> int:
    """Wait for the child; a stopped one gets the terminal back and goes on."""
    while True:
        try:
            pid, status = os.waitpid(child.pid, os.WUNTRACED)
        except ChildProcessError:
            return child.wait()
        except InterruptedError:
            continue
        if pid == 0:
            continue
        if os.WIFSTOPPED(status):
            # Nobody here could resume it later: there is no job control above
            # the rescue shell. Let it go on, in the foreground.
            _give(fd, child.pid)
            _continue(child.pid)
            continue
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        return code


@contextlib.contextmanager
def _ignoring(*signals: signal.Signals) -> Iterator[None]:
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def shell_command() -> list[str]:
    """The interactive shell to start: `$SHELL`, else `/bin/sh`."""
    chosen = os.environ.get("SHELL", "")
    if chosen and shutil.which(chosen):
        return [chosen]
    return ["/bin/sh"]


def editor_command(path: str) -> tuple[list[str] | None, str | None]:
    """The editor to open `path` with, and a note when `$EDITOR` was passed over.

    `$EDITOR` may carry arguments (`vim -u NONE`); without it, or when its
    program is not installed, `vi` and then `nano` are tried.
    """
    note = None
    chosen = os.environ.get("EDITOR", "").strip()
    if chosen:
        try:
            words = shlex.split(chosen)
        except ValueError as exc:
            words = []
            note = f"EDITOR={chosen!r} cannot be split: {exc}"
        if words and shutil.which(words[0]):
            return [*words, path], None
        if words:
            note = f"the editor {words[0]!r} of EDITOR is not installed"
    for name in EDITORS:
        found = shutil.which(name)
        if found:
            return [found, path], note
    return None, note


def terminal_size(default: tuple[int, int] = (80, 24)) -> tuple[int, int]:
    """Columns and rows of standard output; `default` when it reports none.

    A serial line reports 0x0 until `stty rows R cols C` sets it.
    """
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return default
    columns = size.columns or default[0]
    rows = size.lines or default[1]
    return columns, rows
