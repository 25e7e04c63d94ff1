"""Spawning, reaping and killing the processes of modules.

Every child is started in a session and process group of its own. One SIGCHLD
handler reaps every child of the orchestrator with `waitpid(-1)`: the modules'
main processes, their readiness checks, and the orphans that the kernel hands
to the orchestrator because it is PID 1 or a child subreaper. Nothing else in
the orchestrator may wait for children, so nothing here uses asyncio's child
watchers.

A module's processes are the members of its process group plus every
descendant of the orchestrator that carries the module's start token in its
environment (`PARTENZA_TOKEN`): that second set finds daemons that double-forked
into a session of their own. `ProcessManager.belongs` asks the same of one pid,
for what a module says about itself (`MAINPID=`, the sender of a notify
datagram).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from partenza.paths import which

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
TOKEN_VARIABLE = "PARTENZA_TOKEN"
MAIN_POLL = 0.2
"""Seconds between two looks at a process `ended` cannot watch with a pidfd."""


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code or a signal."""

    code: int | None
    signal: int | None

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.WEXITSTATUS(status), None)

    @property
    def success(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        """`exited 1` or `killed by SIGKILL`; `ended` when the status is unknown
        (a process reaped by a parent of its own)."""
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        if self.code is None:
            return "ended"
        return f"exited {self.code}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Child:
    """One process the orchestrator started, in its own process group."""

    def __init__(self, popen: subprocess.Popen[bytes], token: str | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid
        self.token = token
        self.started = time.monotonic()
        self.status: ExitStatus | None = None
        """Set when the process has been reaped."""
        self.exited: asyncio.Future[ExitStatus] = (
            asyncio.get_running_loop().create_future()
        )

    @property
    def running(self) -> bool:
        return self.status is None

    async def wait(self) -> ExitStatus:
        """The exit status, once reaped. Cancelling the wait leaves the
        process and its `exited` future alone."""
        return await asyncio.shield(self.exited)


class ProcessManager:
    """Starts children and reaps every child of this process."""

    def __init__(self) -> None:
        self._children: dict[int, Child] = {}
        self._watched: dict[int, asyncio.Future[ExitStatus]] = {}
        self._programs: dict[tuple[str, str | None], str | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.orphans_reaped = 0
        self.subreaper = False

    def install(self) -> None:
        """Take over SIGCHLD on the running loop and become a child subreaper."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        # A thousand children that end at once overflow the loop's wakeup
        # pipe; a lost wakeup byte costs nothing, since reap() collects every
        # child there is, so the overflow is not worth a warning each.
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
        if os.getpid() == 1:
            self.subreaper = True
        else:
            self.subreaper = become_subreaper()
            if not self.subreaper:
                log.warning("cannot become a child subreaper; orphans go to init")
        self.reap()

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: str,
        user: str | None = None,
        group: str | None = None,
        capture: bool = True,
        token: str | None = None,
    ) -> Child:
        """Start `argv` in a new session; stdout and stderr are pipes if `capture`.

        Raises:
            OSError: the program could not be executed (not found, not allowed).
        """
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        extra: dict[str, object] = {}
        if os.geteuid() == 0:
            if user is not None:
                extra["user"] = user
            if group is not None:
                extra["group"] = group
            if user is not None and group is None:
                extra["extra_groups"] = []
        elif user is not None or group is not None:
            raise PermissionError(
                errno.EPERM, "switching user or group needs an orchestrator run as root"
            )
        popen = subprocess.Popen(
            list(argv),
            executable=self._resolve(argv[0], env.get("PATH")),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            bufsize=0,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            **extra,  # type: ignore[arg-type]
        )
        child = Child(popen, token)
        self._children[child.pid] = child
        if capture:
            for stream in (popen.stdout, popen.stderr):
                assert stream is not None
                try:
                    import fcntl

                    fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    pass
        return child

    def _resolve(self, program: str, path: str | None) -> str | None:
        """The program's path, looked up once per PATH rather than by execvp
        at every spawn (which tries every PATH entry before the right one)."""
        if "/" in program:
            return None
        key = (program, path)
        if key not in self._programs:
            self._programs[key] = which(program, path)
        return self._programs[key]

    def spawn_on_terminal(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        terminal: int,
        path: str,
        own_terminal: bool,
    ) -> Child:
        """Start `argv` with a terminal as its stdin, stdout and stderr.

        Args:
            terminal: An open file descriptor of the terminal.
            path: The terminal's path, for a child that must open it itself.
            own_terminal: The terminal is this process's controlling terminal:
                the child joins its session in a process group of its own, for
                the caller to make the foreground group. Otherwise the child
                starts a session of its own that takes the terminal as its
                controlling terminal (`partenza.ttyexec`).

        Raises:
            OSError: the program could not be executed.
        """
        if own_terminal:
            popen = subprocess.Popen(
                list(argv),
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                env=env,
                process_group=0,
                close_fds=True,
            )
        else:
            popen = subprocess.Popen(
                [sys.executable, "-m", "partenza.ttyexec", path, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        child = Child(popen, None)
        self._children[child.pid] = child
        return child

    def reap(self) -> None:
        """Collect every child that has ended; adopted orphans are counted."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            watched = self._watched.pop(pid, None)
            if watched is not None and not watched.done():
                watched.set_result(ExitStatus.from_wait(status))
            if child is None:
                self.orphans_reaped += 1
                log.debug(
                    "reaped orphan %d (%s)",
                    pid,
                    ExitStatus.from_wait(status).describe(),
                )
                continue
            result = ExitStatus.from_wait(status)
            child.popen.returncode = os.waitstatus_to_exitcode(status)
            child.status = result
            if not child.exited.done():
                child.exited.set_result(result)

    @property
    def children(self) -> Iterable[Child]:
        return self._children.values()

    def watch(self, pid: int) -> asyncio.Future[ExitStatus] | None:
        """A future for the end of `pid`, a descendant that this process will
        reap once it is adopted; None when `pid` is already gone."""
        if pid in self._children:
            return self._children[pid].exited
        if process_group(pid) is None:
            return None
        future = self._watched.get(pid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._watched[pid] = future
        return future

    def unwatch(self, pid: int, status: ExitStatus | None = None) -> None:
        """Stop waiting for `pid`: it ended where this process cannot reap it,
        or is given up on; a waiter of `watch` is told `status` then."""
        future = self._watched.pop(pid, None)
        if future is not None and status is not None and not future.done():
            future.set_result(status)

    def belongs(self, child: Child, pid: int) -> bool:
        """Whether `pid` is one of the processes of the module that `child`
        started: a member of its process group or session, a descendant of
        its main process, or a descendant of this process that carries its
        start token (a daemon that forked, started a session and forked
        again). Zombies count: `systemd-notify` may have ended already.
        """
        if pid <= 1 or pid == os.getpid():
            return False
        if pid == child.pid:
            # Once reaped, its pid may name another process.
            return child.running
        ids = process_ids(pid)
        if ids is None:
            return False
        _, pgrp, session = ids
        if child.pgid in (pgrp, session):
            return True
        line = ancestors(pid)
        if child.running and child.pid in line:
            return True
        return (
            bool(child.token)
            and os.getpid() in line
            and carries_token(pid, child.token or "")
        )

    def strays(self, child: Child) -> list[int]:
        """A module's processes outside its group, found by its token.

        They can only descend from its main process, while that lives, or
        from the orphans this process adopted as their subreaper.
        """
        if not child.token:
            return []
        roots = [child.pid] if child.running else []
        adopted = [pid for pid in children_of(os.getpid()) if pid not in self._children]
        return [
            pid
            for pid in process_tree(roots + adopted)
            if process_group(pid) != child.pgid and carries_token(pid, child.token)
        ]

    def signal(self, child: Child, sig: int) -> int:
        """Signal a module's group and its strays; how many strays there were."""
        signal_group(child.pgid, sig)
        strays = self.strays(child)
        for pid in strays:
            self.kill(pid, sig)
        return len(strays)

    def alive(self, child: Child) -> bool:
        """Whether anything of the module that `child` started is left."""
        return group_alive(child.pgid) or bool(self.strays(child))

    def leftovers(self) -> list[int]:
        """Every descendant of this process still alive."""
        return descendants()

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def become_subreaper() -> bool:
    """Ask the kernel to hand this process the orphans of its descendants."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process, zombies included, is left in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def sigttou_blocked() -> Iterator[None]:
    """Block SIGTTOU, so that a process in a background group may set the
    terminal's foreground group or its modes without being stopped."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def children_of(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as handle:
                found.extend(int(word) for word in handle.read().split())
        except OSError:
            continue
    return found


def process_tree(roots: Iterable[int]) -> list[int]:
    """`roots` and all their descendants."""
    found: list[int] = []
    seen: set[int] = set()
    queue = list(roots)
    while queue:
        pid = queue.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        queue.extend(children_of(pid))
    return found


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of `/proc/PID/stat` after the command name (the state
    first); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def process_group(pid: int) -> int | None:
    """The process group of `pid`, or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def process_ids(pid: int) -> tuple[int, int, int] | None:
    """The parent, process group and session of `pid`; None when it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[1]), int(fields[2]), int(fields[3])) if fields else None


def process_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot: with the pid, it names
    one process, whatever reuses the pid later. None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def ended(pid: int) -> asyncio.Future[None]:
    """A future set once `pid` has ended (a zombie counts), whoever reaps it.

    It is watched through a pidfd, so nothing polls; where the kernel has no
    pidfd (before Linux 5.3), it is looked at every MAIN_POLL seconds.
    Cancelling the future stops the watch.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        future.set_result(None)
        return future
    except OSError:

        def look() -> None:
            if future.done():
                return
            if is_alive(pid):
                loop.call_later(MAIN_POLL, look)
            else:
                future.set_result(None)

        look()
        return future

    def readable() -> None:
        if not future.done():
            future.set_result(None)

    def close(_: asyncio.Future[None]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, readable)
    future.add_done_callback(close)
    return future


def ancestors(pid: int) -> list[int]:
    """The parent of `pid`, its parent, and so on up to init."""
    line: list[int] = []
    ids = process_ids(pid)
    while ids is not None and ids[0] > 0 and len(line) < 4096:
        parent = ids[0]
        if parent in line:
            break
        line.append(parent)
        if parent == 1:
            break
        ids = process_ids(parent)
    return line


def carries_token(pid: int, token: str) -> bool:
    """Whether `pid` has `PARTENZA_TOKEN=token` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return False
    return f"{TOKEN_VARIABLE}={token}".encode() in environ.split(b"\0")


def descendants() -> list[int]:
    """Every descendant of this process."""
    return process_tree(children_of(os.getpid()))


def processes_carrying(assignment: str) -> list[int]:
    """Every other process whose environment holds `NAME=value` exactly."""
    needle = assignment.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def is_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != b"Z"
