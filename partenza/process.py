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
into a session of their own.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
TOKEN_VARIABLE = "PARTENZA_TOKEN"


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
        """`exited 1` or `killed by SIGKILL`."""
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
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
        self.exited: asyncio.Future[ExitStatus] = (
            asyncio.get_running_loop().create_future()
        )

    @property
    def running(self) -> bool:
        return not self.exited.done()


class ProcessManager:
    """Starts children and reaps every child of this process."""

    def __init__(self) -> None:
        self._children: dict[int, Child] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.orphans_reaped = 0
        self.subreaper = False

    def install(self) -> None:
        """Take over SIGCHLD on the running loop and become a child subreaper."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
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
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
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
            if not child.exited.done():
                child.exited.set_result(result)

    @property
    def children(self) -> Iterable[Child]:
        return self._children.values()


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


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(ppid, pgid) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[2])


def descendants(root: int | None = None) -> dict[int, int]:
    """Every descendant of `root` (this process by default), to its pgid."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(entry)
        if stat is None:
            continue
        pid = int(entry)
        parents.setdefault(stat[0], []).append(pid)
        groups[pid] = stat[1]
    found: dict[int, int] = {}
    queue = [root]
    while queue:
        for pid in parents.get(queue.pop(), ()):
            if pid not in found:
                found[pid] = groups[pid]
                queue.append(pid)
    return found


def tagged_processes(token: str, exclude_group: int | None = None) -> list[int]:
    """Descendants outside `exclude_group` whose environment carries `token`."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found = []
    for pid, pgid in descendants().items():
        if pgid == exclude_group:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def signal_module(pgid: int, token: str | None, sig: int) -> int:
    """Send `sig` to a module's group and to its tagged strays; how many strays."""
    signal_group(pgid, sig)
    strays = tagged_processes(token, exclude_group=pgid) if token else []
    for pid in strays:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(strays)


def module_alive(pgid: int, token: str | None) -> bool:
    """Whether anything of a module is left: its group or a tagged stray."""
    if group_alive(pgid):
        return True
    return bool(token and tagged_processes(token, exclude_group=pgid))
