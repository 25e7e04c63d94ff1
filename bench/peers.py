"""Partenza side by side with supervisord, runit and s6, on one machine in one run.

Usage:

    .venv/bin/python bench/peers.py [--quick] [--services N] [--reps R]
        [--kills K] [--status-runs S] [--idle SECONDS] [--chain-depth D]
        [--chain-delay MS] [--tools LIST] [--no-install] [--keep]
        [--doc docs/benchmarks.md] [--svg docs/benchmarks.svg]

It finds the peers, and installs what is missing when it runs as root and
`--no-install` is not given: supervisord from PyPI into the venv (`pip install
supervisor`), runit (`runsvdir`, `runsv`, `sv`) and s6 (`s6-svscan`,
`s6-supervise`, `s6-svstat`) from Debian's packages (`apt-get install
--no-install-recommends runit s6`). Each tool gets N `sleep 3600` services in
a scratch folder on tmpfs (/dev/shm, then /run), and its state there too:
service directories and supervise folders for runit and s6, the socket, logs
and child logs of supervisord, PARTENZA_RUNTIME_DIR and PARTENZA_STATE_DIR for
Partenza. Nothing is read from or written to /etc/service, /etc/sv or
/run/partenza.

The run has three parts, and the tools take turns within each repetition (the
order rotates from one repetition to the next), so that a noisy machine
weighs on all of them alike:

1. R repetitions; in each, every tool is started with N services and measured:
   - cold start: from exec of the supervisor until every service runs by the
     tool's own status (runit's supervise/stat files, s6's supervise/status
     files, supervisord's XML-RPC `getAllProcessInfo`, Partenza's event
     stream), read every 2 ms (5 ms for supervisord, whose status is a
     request), and the CPU time the supervisor's processes used until then
     (/proc/PID/task/*/schedstat), which a noisy machine disturbs less;
     Partenza also once with `--no-cache`, the first boot after a plan change;
   - memory: PSS and RSS of the supervisor's own processes summed (runsvdir
     and every runsv; s6-svscan and every s6-supervise; supervisord;
     partenza), the services left out;
   - status: `partenza status`, `supervisorctl status`, `sv status` on every
     service, and `s6-svstat` once per service in one `sh` loop, wall time;
   - restart: `kill -9` of one service's process, then a tight loop on the
     supervising process's /proc/PID/task/*/children until a new child has
     exec'd `sleep`; each kill hits another service, no client is attached
     meanwhile, and the next kill waits 50 ms after the replacement.
   Partenza runs twice here: with the default restart delay (100 ms) and with
   `restart.delay = "0ms"`.
2. Idle: every tool at once, N services each, nothing happening; after a
   settling pause, the CPU each supervisor's processes use over `--idle`
   seconds: clock ticks (utime + stime from /proc/PID/stat), on-CPU time
   (/proc/PID/task/*/schedstat) and context switches.
3. A dependency chain: N listeners in chains D deep, each waiting
   `--chain-delay` ms before it listens on a loopback port, each link
   `requires` the one before, `ready.kind = "tcp"`. Partenza boots it with
   the default `ready.interval` and with `interval = "10ms"`; the floor is the
   same listeners started by this process itself, each as soon as the one
   before accepts a connection (polled every millisecond): once for all the
   chains at once and once for a single chain. runit, s6 (without s6-rc) and
   supervisord order nothing by readiness, so they have no row.

It prints a markdown report; `--doc FILE` also puts it between the markers
`<!-- peers:begin -->` and `<!-- peers:end -->` of FILE, and `--svg FILE`
draws the figures. Everything it starts is ended by PID when it finishes, on
an error or on Ctrl-C; at the end it checks that no process it started is
left and says so. It reports figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xmlrpc.client
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import (
    PARTENZA,
    POLL,
    ROOT,
    VENV_BIN,
    VENV_PYTHON,
    WARM_UP,
    Drain,
    Reaper,
    Watcher,
    descendants,
    free_ports,
    module_name,
    scratch_root,
    signals_end_the_run,
    source_state,
    write_plan,
)

from partenza.client import Client, ClientError, NotRunning

SUPERVISORD = VENV_BIN / "supervisord"
SUPERVISORCTL = VENV_BIN / "supervisorctl"
PIP = VENV_BIN / "pip"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
SETTLE = 1.0
"""Seconds between all services running and the first measurement."""
IDLE_SETTLE = 5.0
"""Seconds every tool is left alone before the idle window opens."""
REQUEST_POLL = 0.005
"""How often supervisord is asked for its status during a cold start."""
WATCH_PAUSE = 0.0002
"""The pause between two looks at a supervisor's children after a kill."""
KILL_GAP = 0.05
"""Seconds between a replacement seen and the next kill."""
KILL_TIMEOUT = 10.0
FLOOR_POLL = 0.001
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
DOC_BEGIN = "<!-- peers:begin -->"
DOC_END = "<!-- peers:end -->"

LISTENER = """\
# A chain link for the benchmark: wait, then accept and close TCP connections.
select(undef, undef, undef, $ARGV[0]);
socket(S, 2, 1, 6) or die "socket: $!";
setsockopt(S, 1, 2, pack("l", 1)) or die "setsockopt: $!";
bind(S, pack("S n a4 x8", 2, $ARGV[1], "\\x7f\\0\\0\\1")) or die "bind: $!";
listen(S, 128) or die "listen: $!";
while (accept(C, S)) { close(C); }
"""
"""Perl without modules starts in about 3 ms, Python in about 16: the chain
measures the orchestrator, not the interpreter of its modules."""


# Small readers of /proc.


def read_bytes(path: str) -> bytes | None:
    """The contents of a small file, or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first)."""
    data = read_bytes(f"/proc/{pid}/stat")
    if data is None:
        return None
    return data[data.rfind(b")") + 2 :].split()


def comm(pid: int) -> str:
    """The command name of a process, or an empty string when it is gone."""
    data = read_bytes(f"/proc/{pid}/comm")
    return data.decode(errors="replace").strip() if data else ""


def parent_of(pid: int) -> int | None:
    """The parent of a process."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def children_paths(pid: int) -> list[str]:
    """The /proc files that list the children of each thread of `pid`."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [f"/proc/{pid}/task/{task}/children" for task in tasks]


def children(paths: list[str]) -> list[int]:
    """The children listed in `paths`."""
    found: list[int] = []
    for path in paths:
        data = read_bytes(path)
        if data:
            found.extend(int(word) for word in data.split())
    return found


def own_processes(root: int, service: str = "sleep") -> list[int]:
    """`root` and its descendants, without the services (`service` processes
    and what they started): the supervisor's own processes."""
    tree = descendants(root)
    parents = {pid: parent_of(pid) for pid in tree}
    own = [root]
    for pid in tree:
        if tree[pid] == "Z":
            continue
        chain, cursor, is_service = 0, pid, False
        while cursor is not None and cursor != root and chain < 64:
            if comm(cursor) == service:
                is_service = True
                break
            cursor, chain = parents.get(cursor), chain + 1
        if not is_service:
            own.append(pid)
    return own


def memory_kib(pids: Iterable[int]) -> tuple[int, int]:
    """PSS and RSS of `pids` summed, in KiB, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    for pid in pids:
        data = read_bytes(f"/proc/{pid}/smaps_rollup")
        if not data:
            continue
        for line in data.splitlines():
            if line.startswith(b"Pss:"):
                pss += int(line.split()[1])
            elif line.startswith(b"Rss:"):
                rss += int(line.split()[1])
    return pss, rss


@dataclass
class Cpu:
    """CPU used by a set of processes up to now."""

    ticks: int
    ns: int
    switches: int


def cpu_of(pids: Iterable[int]) -> Cpu:
    """Clock ticks (utime + stime), on-CPU nanoseconds and context switches."""
    ticks = ns = switches = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            sched = read_bytes(f"/proc/{pid}/task/{task}/schedstat")
            if sched:
                ns += int(sched.split()[0])
            status = read_bytes(f"/proc/{pid}/task/{task}/status") or b""
            for line in status.splitlines():
                if line.startswith((b"voluntary_ctxt", b"nonvoluntary_ctxt")):
                    switches += int(line.split()[1])
    return Cpu(ticks, ns, switches)


def python_env(scratch: Path) -> dict[str, str]:
    """The environment of every tool: bytecode cached in the scratch folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTENZA_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    env["NO_COLOR"] = "1"
    return env


# The run's processes.


class PeerReaper(Reaper):
    """Ends every supervisor this benchmark started, each by the signal that
    makes it stop its services, then whatever is left below this process."""

    def __init__(self) -> None:
        """Remember nothing yet; become a child subreaper."""
        super().__init__()
        self.stop_signals: dict[int, int] = {}
        self.started = 0

    def start(self, proc: subprocess.Popen[bytes], stop_signal: int) -> None:
        """Remember a supervisor and the signal that stops it in order."""
        self.track(proc)
        self.stop_signals[proc.pid] = stop_signal
        self.started += 1

    def reap_orphans(self) -> None:
        """Collect adopted processes that have ended, leaving tracked ones."""
        tracked = {proc.pid for proc in self.boots}
        for pid, state in descendants(self.me).items():
            if state == "Z" and pid not in tracked:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def settle(self, timeout: float) -> list[int]:
        """Wait until nothing below this process is left; what is left."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.boots:
                proc.poll()
            self.reap_orphans()
            left = [p for p, s in descendants(self.me).items() if s != "Z"]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.01)

    def cleanup(self) -> None:
        """The orderly stop first, then SIGTERM, then SIGKILL to what is left."""
        for proc in self.boots:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, self.stop_signals.get(proc.pid, signal.SIGTERM))
        deadline = time.monotonic() + 10.0
        for proc in self.boots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.settle(5.0)
        super().cleanup()

    def verdict(self) -> str:
        """A sentence saying whether anything this benchmark started is left."""
        alive = [proc.pid for proc in self.boots if proc.poll() is None]
        left = descendants(self.me)
        if not alive and not left:
            return (
                f"cleanup: no process left ({self.started} supervisors started and "
                f"ended by PID, and no descendant of pid {self.me}"
                f"{'; this process was a child subreaper' if self.subreaper else ''})"
            )
        return (
            f"cleanup: PROCESSES LEFT: supervisors {alive}, descendants "
            f"{sorted(left)[:20]}"
        )


# The tools.


class Unready(RuntimeError):
    """A tool did not get every service running in time."""


class Tool:
    """One supervisor with N `sleep` services in a folder of its own."""

    key = ""
    label = ""
    stop_signal = signal.SIGTERM

    def __init__(self, bench: Bench) -> None:
        """A tool with the bench's services, not started."""
        self.bench = bench
        self.n = bench.services
        self.names = [module_name(i) for i in range(self.n)]
        self.folder = Path()
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, folder: Path) -> None:
        """Write the services' configuration into `folder`."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        """The supervisor's command line."""
        raise NotImplementedError

    def launch(self) -> None:
        """Start the supervisor as the leader of a process group, its PID tracked."""
        log = open(self.folder / "supervisor.out", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self.bench.env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.bench.reaper.start(self.proc, self.stop_signal)

    def wait_running(self, deadline: float) -> float:
        """Block until every service runs by the tool's own status; when."""
        raise NotImplementedError

    def service_pids(self) -> dict[str, int]:
        """Each service's process, by the tool's own status, in one query."""
        raise NotImplementedError

    def status_argv(self) -> list[str]:
        """The status command over every service."""
        raise NotImplementedError

    def running_in(self, output: str) -> int:
        """How many services the status command's output shows running."""
        raise NotImplementedError

    def own_pids(self) -> list[int]:
        """The supervisor's own processes."""
        assert self.proc is not None
        return own_processes(self.proc.pid)

    def stop(self) -> None:
        """Stop the supervisor in order, by its PID, and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc.poll() is None:
            self.bench.problem(f"{self.label}: did not stop in {STOP_TIMEOUT:.0f}s")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def version(self) -> str:
        """The tool's version, as its package says."""
        return "?"

    def _poll_files(
        self, deadline: float, path: Callable[[str], Path], up: Callable[[bytes], bool]
    ) -> float:
        """Read each service's status file until every one says it runs."""
        pending = list(self.names)
        while pending:
            pending = [
                name for name in pending if not up(read_bytes(str(path(name))) or b"")
            ]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise Unready(f"{len(pending)} of {self.n} services not running")
            self._alive()
            time.sleep(POLL)
        return time.monotonic()

    def _alive(self) -> None:
        """Fail at once when the supervisor has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise Unready(f"{self.label} exited {self.proc.returncode}")


def dpkg_version(package: str) -> str:
    """The installed version of a Debian package."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def write_run_scripts(scan: Path, names: list[str]) -> None:
    """A service directory per name, each with `./run` exec'ing `sleep 3600`.

    The scan folder is dated a minute back, as on a system whose services
    were set up before the boot: runsvdir waits a second before it reads a
    folder changed within the last second.
    """
    scan.mkdir(parents=True)
    for name in names:
        service = scan / name
        service.mkdir()
        run = service / "run"
        run.write_text("#!/bin/sh\nexec sleep 3600\n")
        run.chmod(0o755)
    past = time.time() - 60
    os.utime(scan, (past, past))


class Runit(Tool):
    """runsvdir on a scan folder; a runsv per service."""

    key = "runit"
    label = "runit"
    stop_signal = signal.SIGHUP
    """runsvdir sends TERM to every runsv, which stops its service and exits."""

    def prepare(self, folder: Path) -> None:
        """Write the services into `folder`."""
        self.folder = folder
        self.scan = folder / "service"
        write_run_scripts(self.scan, self.names)

    def argv(self) -> list[str]:
        """The supervisor's command line."""
        return [self.bench.programs["runsvdir"], str(self.scan)]

    def wait_running(self, deadline: float) -> float:
        """Block until every service runs by the tool's own status; when."""
        return self._poll_files(
            deadline,
            lambda name: self.scan / name / "supervise" / "stat",
            lambda data: data.startswith(b"run"),
        )

    def service_pids(self) -> dict[str, int]:
        """Each service's process, in one query."""
        pids = {}
        for name in self.names:
            data = read_bytes(str(self.scan / name / "supervise" / "pid"))
            if data and data.strip():
                pids[name] = int(data)
        return pids

    def status_argv(self) -> list[str]:
        """The status command over every service."""
        return [
            self.bench.programs["sv"],
            "status",
            *(str(self.scan / name) for name in self.names),
        ]

    def running_in(self, output: str) -> int:
        """How many services the status output shows running."""
        return sum(1 for line in output.splitlines() if line.startswith("run: "))

    def version(self) -> str:
        """The tool's version."""
        return dpkg_version("runit")


def s6_pid(data: bytes) -> int:
    """The service's pid in an s6-supervise status file (0: down)."""
    # s6 2.11: tain stamp (12 bytes), ready stamp (12), pid (8, big endian),
    # wait status (2), flags (1).
    if len(data) < 32:
        return 0
    return int.from_bytes(data[24:32], "big")


class S6(Tool):
    """s6-svscan on a scan folder; an s6-supervise per service."""

    key = "s6"
    label = "s6"
    stop_signal = signal.SIGTERM
    """s6-svscan tells every s6-supervise to stop its service and exit."""

    def prepare(self, folder: Path) -> None:
        """Write the services into `folder`."""
        self.folder = folder
        self.scan = folder / "scan"
        write_run_scripts(self.scan, self.names)

    def argv(self) -> list[str]:
        """The supervisor's command line."""
        return [self.bench.programs["s6-svscan"], str(self.scan)]

    def wait_running(self, deadline: float) -> float:
        """Block until every service runs by the tool's own status; when."""
        return self._poll_files(
            deadline,
            lambda name: self.scan / name / "supervise" / "status",
            lambda data: s6_pid(data) != 0,
        )

    def service_pids(self) -> dict[str, int]:
        """Each service's process, in one query."""
        pids = {}
        for name in self.names:
            data = read_bytes(str(self.scan / name / "supervise" / "status"))
            if data and s6_pid(data):
                pids[name] = s6_pid(data)
        return pids

    def status_argv(self) -> list[str]:
        # s6-svstat takes one service directory: once per service.
        """The status command over every service."""
        return [
            "/bin/sh",
            "-c",
            'for d in "$0"/*; do "$1" "$d"; done',
            str(self.scan),
            self.bench.programs["s6-svstat"],
        ]

    def running_in(self, output: str) -> int:
        """How many services the status output shows running."""
        return sum(1 for line in output.splitlines() if line.startswith("up "))

    def version(self) -> str:
        """The tool's version."""
        return dpkg_version("s6")


class Supervisord(Tool):
    """supervisord in the foreground, a `[program:x]` per service."""

    key = "supervisord"
    label = "supervisord"
    stop_signal = signal.SIGTERM

    def prepare(self, folder: Path) -> None:
        """Write the services into `folder`."""
        self.folder = folder
        folder.mkdir(parents=True)
        (folder / "logs").mkdir()
        self.sock = folder / "supervisor.sock"
        self.conf = folder / "supervisord.conf"
        lines = [
            "[unix_http_server]",
            f"file={self.sock}",
            "",
            "[supervisord]",
            f"logfile={folder / 'supervisord.log'}",
            f"pidfile={folder / 'supervisord.pid'}",
            f"childlogdir={folder / 'logs'}",
            "nodaemon=true",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
            "",
        ]
        for name in self.names:
            # startsecs=0: RUNNING once spawned, as `started` is for Partenza
            # and `run`/`up` for runit and s6 (the default waits a second).
            lines += [
                f"[program:{name}]",
                "command=sleep 3600",
                "startsecs=0",
                "autorestart=true",
                "",
            ]
        self.conf.write_text("\n".join(lines))

    def argv(self) -> list[str]:
        """The supervisor's command line."""
        return [str(SUPERVISORD), "-n", "-c", str(self.conf)]

    def _proxy(self) -> Any:
        """An XML-RPC proxy on supervisord's socket."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _info(self) -> list[dict[str, Any]]:
        """Every program's record, in one request."""
        return self._proxy().supervisor.getAllProcessInfo()

    def wait_running(self, deadline: float) -> float:
        """Block until every service runs by the tool's own status; when."""
        while True:
            self._alive()
            if self.sock.exists():
                try:
                    infos = self._info()
                except (OSError, xmlrpc.client.Fault):
                    infos = []
                running = sum(1 for i in infos if i["statename"] == "RUNNING")
                if running == self.n:
                    return time.monotonic()
            if time.monotonic() > deadline:
                raise Unready("supervisord: not every program RUNNING")
            time.sleep(REQUEST_POLL)

    def service_pids(self) -> dict[str, int]:
        """Each service's process, in one query."""
        return {i["name"]: i["pid"] for i in self._info() if i["pid"]}

    def status_argv(self) -> list[str]:
        """The status command over every service."""
        return [str(SUPERVISORCTL), "-c", str(self.conf), "status"]

    def running_in(self, output: str) -> int:
        """How many services the status output shows running."""
        return sum(1 for line in output.splitlines() if " RUNNING " in line)

    def version(self) -> str:
        """The tool's version."""
        done = subprocess.run(
            [str(SUPERVISORD), "--version"],
            capture_output=True,
            text=True,
            env=self.bench.env,
            check=False,
        )
        return done.stdout.strip() or "?"


class Partenza(Tool):
    """`partenza boot PLAN`, its runtime folder fresh and its state folder kept."""

    stop_signal = signal.SIGTERM
    """SIGTERM shuts the plan down in order."""

    def __init__(
        self,
        bench: Bench,
        key: str,
        label: str,
        plan: Path,
        *,
        no_cache: bool = False,
    ) -> None:
        """Partenza on `plan`, its state folder kept across boots."""
        super().__init__(bench)
        self.key = key
        self.label = label
        self.plan = plan
        self.no_cache = no_cache
        self.state = bench.scratch / "state" / key
        self.console: Drain | None = None
        self.watcher: Watcher | None = None

    def prepare(self, folder: Path) -> None:
        """A fresh runtime folder in `folder`; the plan is written already."""
        self.folder = folder
        folder.mkdir(parents=True)
        self.env = dict(self.bench.env)
        self.env["PARTENZA_RUNTIME_DIR"] = str(folder / "runtime")
        self.env["PARTENZA_STATE_DIR"] = str(self.state)
        self.sock = folder / "runtime" / "control.sock"

    def warm(self) -> None:
        """Compile the plan once, so that later boots find it in the cache."""
        self.prepare(self.bench.scratch / "warm" / self.key)
        done = subprocess.run(
            [str(PARTENZA), "plan", str(self.plan), "--json"],
            env=self.env,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"partenza plan: {done.stderr.decode().strip()}")

    def argv(self) -> list[str]:
        """The supervisor's command line."""
        return [str(PARTENZA), "boot", str(self.plan)] + (
            ["--no-cache"] if self.no_cache else []
        )

    def launch(self) -> None:
        """Start `partenza boot`, its console read by a drain thread."""
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.bench.reaper.start(self.proc, self.stop_signal)
        assert self.proc.stdout is not None
        self.console = Drain(self.proc.stdout, self.folder / "console.out")
        self.console.start()

    def client(self, timeout: float = 30.0) -> Client:
        """A connection to the control socket."""
        return Client(self.sock, timeout=timeout)

    def wait_running(self, deadline: float) -> float:
        """Block until every service runs by the tool's own status; when."""
        while True:
            self._alive()
            if self.sock.exists():
                try:
                    client = self.client()
                    break
                except NotRunning:
                    pass
            if time.monotonic() > deadline:
                raise Unready("the control socket never answered")
            time.sleep(POLL)
        watcher = Watcher(client)
        self.watcher = watcher
        watcher.start()
        watcher.join(max(0.0, deadline - time.monotonic()))
        if not watcher.is_alive():
            client.close()
        if watcher.error is not None:
            raise Unready(f"event stream: {watcher.error}")
        if watcher.done_at is None:
            raise Unready("no boot event")
        if watcher.boot_event is None:
            self.bench.problem(f"{self.label}: connected after the boot")
        counts = (watcher.boot_event or {}).get("counts") or {}
        if counts and counts.get("ready", 0) != self.n:
            raise Unready(f"{self.label}: booted with {counts}")
        return watcher.done_at

    def system(self) -> dict[str, Any]:
        """The system record, in one request."""
        with self.client() as status:
            return status.request("status")["system"]

    def service_pids(self) -> dict[str, int]:
        """Each service's process, in one query."""
        with self.client() as status:
            modules = status.request("status")["modules"]
        return {m["name"]: m["pid"] for m in modules if m["pid"]}

    def status_argv(self) -> list[str]:
        """The status command over every service."""
        return [str(PARTENZA), "status"]

    def running_in(self, output: str) -> int:
        """How many services the status output shows running."""
        return sum(1 for line in output.splitlines() if line.split()[1:2] == ["ready"])

    def stop(self) -> None:
        """SIGTERM, which shuts the plan down in order; then the console."""
        super().stop()
        if self.console is not None:
            self.console.join(5.0)
            if self.console.tracebacks:
                self.bench.problem(f"{self.label}: the console showed a traceback")
        if self.watcher is not None and self.watcher.is_alive():
            self.watcher.client.close()
            self.watcher.join(5.0)

    def version(self) -> str:
        """The tool's version."""
        done = subprocess.run(
            [str(PARTENZA), "--version"],
            capture_output=True,
            text=True,
            env=self.bench.env,
            check=False,
        )
        return done.stdout.strip() or "?"


# The figures.


@dataclass
class Figures:
    """What was measured of one tool, every sample kept."""

    cold: list[float] = field(default_factory=list)
    cold_cpu: list[float] = field(default_factory=list)
    restart: list[float] = field(default_factory=list)
    restart_missed: int = 0
    pss: list[int] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    status: list[float] = field(default_factory=list)
    idle: Cpu | None = None
    idle_seconds: float = 0.0
    chain: list[float] = field(default_factory=list)
    chain_took: list[float] = field(default_factory=list)


def median(values: list[float] | list[int]) -> float | None:
    """The median, or None without samples."""
    return statistics.median(values) if values else None


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile, or None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


class Bench:
    """Runs every measurement, the tools taking turns."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        """Nothing measured yet."""
        self.args = args
        self.scratch = scratch
        self.services = args.services
        self.env = python_env(scratch)
        self.reaper = PeerReaper()
        self.problems: list[str] = []
        self.programs: dict[str, str] = {}
        self.figures: dict[str, Figures] = {}
        self.floor_all: list[float] = []
        self.floor_one: list[float] = []
        self.listener: list[str] = []
        self.partenza_cold: Partenza | None = None
        """`partenza boot --no-cache`, timed for its cold start only."""
        self.partenza_zero: Partenza | None = None
        """Partenza with `restart.delay = "0ms"`; left out of the idle part."""

    def problem(self, text: str) -> None:
        """Note something that went wrong; it is reported with the figures."""
        self.problems.append(text)
        print(f"  problem: {text}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        """A progress line."""
        print(text, file=sys.stderr, flush=True)

    # Set-up.

    def find_peers(self) -> list[str]:
        """Find runit, s6 and supervisord, installing what is missing."""
        wanted = {
            "runit": ["runsvdir", "runsv", "sv"],
            "s6": ["s6-svscan", "s6-supervise", "s6-svstat", "s6-svc"],
        }
        install = not self.args.no_install and os.geteuid() == 0
        missing = [
            p for p, tools in wanted.items() if not all(map(shutil.which, tools))
        ]
        if missing and install:
            self.say(f"installing {' '.join(missing)} from Debian's packages")
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *missing],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        if not SUPERVISORD.exists() and not self.args.no_install:
            self.say("installing supervisor from PyPI into the venv")
            subprocess.run(
                [str(PIP), "install", "--quiet", "supervisor"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        found = ["partenza"]
        for package, tools in wanted.items():
            paths = [shutil.which(tool) for tool in tools]
            if all(paths):
                self.programs.update(
                    {
                        tool: path
                        for tool, path in zip(tools, paths, strict=True)
                        if path
                    }
                )
                found.append(package)
            else:
                self.problem(f"{package} is not installed: no {package} figures")
        if SUPERVISORD.exists() and SUPERVISORCTL.exists():
            found.append("supervisord")
        else:
            self.problem("supervisor is not installed: no supervisord figures")
        return found

    def tools(self) -> list[Tool]:
        """The tools to measure, plans written and warmed."""
        found = self.find_peers()
        chosen = self.args.tools.split(",") if self.args.tools else found
        plans = self.scratch / "plans"
        default = plans / "sleep"
        write_plan(default, self.services, 1, "started")
        quick = plans / "sleep-delay0"
        write_plan(quick, self.services, 1, "started")
        for manifest in quick.glob("m*.toml"):
            with manifest.open("a") as handle:
                handle.write('\n[restart]\ndelay = "0ms"\n')
        result: list[Tool] = []
        if "partenza" in chosen and "partenza" in found:
            main = Partenza(self, "partenza", "partenza", default)
            self.partenza_cold = Partenza(
                self, "partenza-nocache", "partenza --no-cache", default, no_cache=True
            )
            self.partenza_zero = Partenza(
                self, "partenza-delay0", 'partenza, delay "0ms"', quick
            )
            for tool in (main, self.partenza_zero):
                tool.warm()
            result += [main, self.partenza_zero]
        kinds: dict[str, type[Tool]] = {
            "runit": Runit,
            "s6": S6,
            "supervisord": Supervisord,
        }
        for key, kind in kinds.items():
            if key in chosen and key in found:
                result.append(kind(self))
        for tool in result:
            self.figures[tool.key] = Figures()
        if self.partenza_cold is not None:
            self.figures[self.partenza_cold.key] = Figures()
        return result

    def warm_up(self) -> None:
        """Fill the bytecode cache of both Python tools before any timing."""
        for code in (
            WARM_UP,
            "import supervisor.supervisord, supervisor.supervisorctl",
        ):
            subprocess.run(
                [str(VENV_PYTHON), "-c", code],
                env=self.env,
                capture_output=True,
                check=False,
            )

    # Part 1: one tool at a time, in turns.

    def repetitions(self, tools: list[Tool]) -> None:
        """R repetitions; in each, every tool once, the order rotated."""
        reps = self.args.reps
        for rep in range(reps):
            kills = share(self.args.kills, reps, rep)
            statuses = share(self.args.status_runs, reps, rep)
            turn: list[Tool] = list(tools)
            if self.partenza_cold is not None:
                turn.append(self.partenza_cold)
            shift = rep % len(turn)
            turn = turn[shift:] + turn[:shift]
            for tool in turn:
                folder = self.scratch / tool.key / f"rep{rep + 1}"
                if tool is self.partenza_cold:
                    self.measure(tool, folder, cold_only=True)
                else:
                    self.measure(tool, folder, kills=kills, statuses=statuses)

    def measure(
        self,
        tool: Tool,
        folder: Path,
        *,
        kills: int = 0,
        statuses: int = 0,
        cold_only: bool = False,
    ) -> None:
        """Start one tool, measure it, stop it, and check nothing is left."""
        figures = self.figures[tool.key]
        tool.prepare(folder)
        started = time.monotonic()
        tool.launch()
        line = f"{tool.label}:"
        try:
            done = tool.wait_running(started + START_TIMEOUT)
            figures.cold.append(done - started)
            figures.cold_cpu.append(cpu_of(tool.own_pids()).ns / 1e9)
            line += f" cold {ms(done - started)} ({ms(figures.cold_cpu[-1])} CPU)"
            if not cold_only:
                time.sleep(SETTLE)
                own = tool.own_pids()
                pss, rss = memory_kib(own)
                figures.pss.append(pss)
                figures.rss.append(rss)
                figures.processes.append(len(own))
                line += f", PSS {pss / 1024:.1f} MiB in {len(own)} processes"
                times = self.status_runs(tool, statuses)
                figures.status += times
                if times:
                    line += f", status {ms(statistics.median(times))}"
                restarts = self.kills(tool, kills)
                figures.restart += restarts
                if restarts:
                    line += f", restart {ms(statistics.median(restarts))}"
        except (Unready, ClientError, OSError, xmlrpc.client.Error) as exc:
            self.problem(f"{tool.label}: {exc}")
        finally:
            tool.stop()
            self.leftovers(tool.label)
        self.say(line)

    def leftovers(self, what: str) -> None:
        """Wait for everything below this process to end; kill and report
        what is still alive after STOP_TIMEOUT."""
        left = self.reaper.settle(STOP_TIMEOUT)
        if left:
            self.problem(f"{what}: processes left after its stop: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.reaper.settle(5.0)

    def status_runs(self, tool: Tool, runs: int) -> list[float]:
        """Time the status command `runs` times, its output checked each time."""
        times = []
        argv = tool.status_argv()
        env = getattr(tool, "env", self.env)
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            times.append(time.perf_counter() - started)
            shown = tool.running_in(done.stdout.decode(errors="replace"))
            if shown != self.services:
                self.problem(
                    f"{tool.label}: status showed {shown} of {self.services} running "
                    f"(exit {done.returncode})"
                )
        return times

    def kills(self, tool: Tool, count: int) -> list[float]:
        """Kill `count` services, one at a time; the time to each replacement."""
        if count == 0:
            return []
        pids = tool.service_pids()
        times: list[float] = []
        for name in tool.names[:count]:
            pid = pids.get(name)
            if pid is None or pid <= 1 or comm(pid) != "sleep":
                self.problem(f"{tool.label}: no running process for {name}")
                continue
            took = replacement_time(pid)
            if took is None:
                self.figures[tool.key].restart_missed += 1
                self.problem(f"{tool.label}: {name} not replaced in {KILL_TIMEOUT}s")
            else:
                times.append(took)
            time.sleep(KILL_GAP)
        return times

    # Part 2: idle, every tool at once.

    def idle(self, tools: list[Tool]) -> None:
        """Every tool up at once; the CPU each uses while nothing happens."""
        seconds = self.args.idle
        up: list[Tool] = []
        try:
            for tool in tools:
                if tool is self.partenza_zero:
                    continue
                tool.prepare(self.scratch / tool.key / "idle")
                started = time.monotonic()
                tool.launch()
                up.append(tool)
                try:
                    tool.wait_running(started + START_TIMEOUT)
                except Unready as exc:
                    self.problem(f"{tool.label} (idle): {exc}")
                    up.pop()
                    tool.stop()
            time.sleep(self.args.idle_settle)
            own = {tool.key: tool.own_pids() for tool in up}
            before = {key: cpu_of(pids) for key, pids in own.items()}
            opened = time.monotonic()
            time.sleep(seconds)
            after = {key: cpu_of(pids) for key, pids in own.items()}
            window = time.monotonic() - opened
            for tool in up:
                a, b = after[tool.key], before[tool.key]
                cpu = Cpu(a.ticks - b.ticks, a.ns - b.ns, a.switches - b.switches)
                self.figures[tool.key].idle = cpu
                self.figures[tool.key].idle_seconds = window
                self.say(
                    f"{tool.label} idle {window:.1f}s: {cpu.ticks} ticks, "
                    f"{cpu.ns / 1e6:.2f} ms on CPU, {cpu.switches} context switches"
                )
        finally:
            for tool in up:
                tool.stop()
            self.leftovers("the idle part")

    # Part 3: the chain.

    def chain(self) -> None:
        """Partenza on chained TCP listeners, against the floor, in turns."""
        depth, delay = self.args.chain_depth, self.args.chain_delay / 1000
        plans = self.scratch / "plans"
        ports = free_ports(self.services)
        perl = shutil.which("perl")
        variants = [("partenza-chain", "partenza", None)]
        variants.append(("partenza-chain10", 'partenza, interval "10ms"', "10ms"))
        tools = []
        for key, label, interval in variants:
            plan = plans / key
            write_chain_plan(plan, ports, depth, delay, interval, perl)
            tool = Partenza(self, key, label, plan)
            tool.warm()
            tools.append(tool)
            self.figures[key] = Figures()
        listener = plans / "partenza-chain" / ("listener.pl" if perl else "listener.py")
        self.listener = [perl, str(listener)] if perl else [str(VENV_PYTHON), "-S"]
        if not perl:
            self.listener.append(str(listener))
        for rep in range(self.args.chain_reps):
            steps: list[Callable[[], None]] = [
                lambda: self.floor(ports, depth, delay, self.floor_all),
                lambda: self.floor(ports[:depth], depth, delay, self.floor_one),
            ]
            steps += [lambda t=tool, r=rep: self.chain_boot(t, r) for tool in tools]
            shift = rep % len(steps)
            for step in steps[shift:] + steps[:shift]:
                step()

    def chain_boot(self, tool: Partenza, rep: int) -> None:
        """Boot the chain plan once: exec to every module ready, and `took`."""
        figures = self.figures[tool.key]
        tool.prepare(self.scratch / tool.key / f"rep{rep + 1}")
        started = time.monotonic()
        tool.launch()
        try:
            done = tool.wait_running(started + START_TIMEOUT)
            system = tool.system()
            figures.chain.append(done - started)
            figures.chain_took.append(system["boot_took"])
            self.say(
                f"chain {tool.label}: ready {ms(done - started)} after exec, "
                f"took {ms(system['boot_took'])}"
            )
        except (Unready, ClientError, OSError) as exc:
            self.problem(f"chain {tool.label}: {exc}")
        finally:
            tool.stop()
            self.leftovers(f"chain {tool.label}")

    def floor(
        self, ports: list[int], depth: int, delay: float, into: list[float]
    ) -> None:
        """The same chains started by this process, each link when the one
        before accepts a connection."""
        chains = [ports[i : i + depth] for i in range(0, len(ports), depth)]
        position = [0] * len(chains)
        procs: list[subprocess.Popen[bytes]] = []

        def spawn(port: int) -> None:
            """Start one listener, leading a process group of its own."""
            procs.append(
                subprocess.Popen(
                    [*self.listener, f"{delay}", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            self.reaper.modules([procs[-1].pid])

        started = time.monotonic()
        try:
            for chain in chains:
                spawn(chain[0])
            remaining = len(chains)
            while remaining:
                for index, chain in enumerate(chains):
                    if position[index] < len(chain) and accepts(chain[position[index]]):
                        position[index] += 1
                        if position[index] < len(chain):
                            spawn(chain[position[index]])
                        else:
                            remaining -= 1
                if time.monotonic() - started > START_TIMEOUT:
                    raise Unready("the floor's listeners never all listened")
                time.sleep(FLOOR_POLL)
            took = time.monotonic() - started
            into.append(took)
            self.say(f"chain floor, {len(chains)} chains of {depth}: {ms(took)}")
        except Unready as exc:
            self.problem(str(exc))
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for proc in procs:
                proc.wait()
            self.reaper.forget({proc.pid for proc in procs})


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as can be into `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def accepts(port: int) -> bool:
    """Whether a listener accepts connections on the loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def replacement_time(pid: int) -> float | None:
    """Kill `pid` with SIGKILL; seconds until its supervisor's new child runs
    `sleep`, watched on /proc from outside; None if it never does."""
    parent = parent_of(pid)
    if parent is None or pid <= 1:
        return None
    paths = children_paths(parent)
    before = set(children(paths))
    started = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    deadline = started + KILL_TIMEOUT
    while True:
        for child in children(paths):
            if child in before:
                continue
            if comm(child) == "sleep":
                return time.perf_counter() - started
        if time.perf_counter() > deadline:
            return None
        time.sleep(WATCH_PAUSE)


def write_chain_plan(
    folder: Path,
    ports: list[int],
    depth: int,
    delay: float,
    interval: str | None,
    perl: str | None,
) -> None:
    """A plan of listeners in requirement chains `depth` deep, ready on TCP."""
    folder.mkdir(parents=True)
    chains = -(-len(ports) // depth)
    (folder / "plan.toml").write_text(
        'name = "chain"\n'
        f'description = "{len(ports)} listeners in {chains} chains {depth} deep"\n'
    )
    if perl:
        (folder / "listener.pl").write_text(LISTENER)
        program = f"perl listener.pl {delay} "
    else:
        (folder / "listener.py").write_text(PY_LISTENER)
        program = f"${{python}} -S listener.py {delay} "
    for index, port in enumerate(ports):
        lines = [f'exec = "{program}{port}"']
        if index % depth:
            lines.append(f'requires = ["{module_name(index - 1)}"]')
        lines += ["", "[ready]", 'kind = "tcp"', f"port = {port}", 'timeout = "60s"']
        if interval:
            lines.append(f'interval = "{interval}"')
        (folder / f"{module_name(index)}.toml").write_text("\n".join(lines) + "\n")


PY_LISTENER = '''\
"""A chain link for the benchmark: wait, then accept and close connections."""

import socket
import sys
import time

time.sleep(float(sys.argv[1]))
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[2])))
server.listen(128)
while True:
    server.accept()[0].close()
'''


# Reporting.


def ms(value: float | None) -> str:
    """Seconds shown in milliseconds."""
    if value is None:
        return "—"
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value * 1000:.0f} ms"


def mib(value: float | None) -> str:
    """KiB shown in MiB."""
    return "—" if value is None else f"{value / 1024:.1f} MiB"


def ratio(value: float | None) -> str:
    """A ratio, to two places."""
    return "—" if value is None else f"{value:.2f}x"


def divide(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    return None if a is None or not b else a / b


COLUMNS = [
    ("partenza", "partenza"),
    ("partenza-delay0", 'partenza, `delay = "0ms"`'),
    ("runit", "runit"),
    ("s6", "s6"),
    ("supervisord", "supervisord"),
]


Bars = list[tuple[str, str, float | None]]
"""A panel's bars: label, colour, value (None: not measured)."""
Panel = tuple[str, Bars, float | None, str]
"""A panel: title, bars, target (None: none) and the target's label."""


@dataclass
class Report:
    """The figures turned into medians, ratios and text."""

    bench: Bench
    machine: dict[str, str]

    def f(self, key: str) -> Figures:
        """The figures of one tool, empty when it was not measured."""
        return self.bench.figures.get(key, Figures())

    def present(self) -> list[tuple[str, str]]:
        """The columns of the tools that were measured."""
        return [(k, label) for k, label in COLUMNS if k in self.bench.figures]

    def table(self) -> str:
        """Every measure by tool, medians."""
        args = self.bench.args
        cols = self.present()
        rows: list[tuple[str, list[str]]] = []

        def row(label: str, show: Callable[[Figures], str]) -> None:
            """Add a row with one cell per tool."""
            rows.append((label, [show(self.f(k)) for k, _ in cols]))

        row(
            f"cold start, {args.services} services, median of {args.reps}",
            lambda x: ms(median(x.cold)),
        )
        row(
            "cold start: CPU time of the supervisor's processes",
            lambda x: ms(median(x.cold_cpu)),
        )
        nocache = self.f("partenza-nocache")
        if nocache.cold:
            rows.append(
                (
                    "cold start, `partenza boot --no-cache`",
                    [ms(median(nocache.cold))] + ["—"] * (len(cols) - 1),
                )
            )
        row(
            f"restart after `kill -9`, median of {args.kills}",
            lambda x: ms(median(x.restart)),
        )
        row("restart, p95", lambda x: ms(percentile(x.restart, 0.95)))
        row("restart, max", lambda x: ms(max(x.restart) if x.restart else None))
        row(
            "PSS of the supervisor's processes",
            lambda x: mib(median(x.pss)),
        )
        row("RSS of the same, summed", lambda x: mib(median(x.rss)))
        row(
            "its processes",
            lambda x: f"{median(x.processes):.0f}" if x.processes else "—",
        )
        row(
            f"idle CPU over {args.idle:g} s: clock ticks",
            lambda x: f"{x.idle.ticks}" if x.idle else "—",
        )
        row(
            "idle: time on CPU (schedstat)",
            lambda x: ms(x.idle.ns / 1e9) if x.idle else "—",
        )
        row(
            "idle: context switches",
            lambda x: f"{x.idle.switches}" if x.idle else "—",
        )
        row(
            f"status of {args.services}, median of {args.status_runs}",
            lambda x: ms(median(x.status)),
        )
        row("status, p95", lambda x: ms(percentile(x.status, 0.95)))
        head = "| measure | " + " | ".join(label for _, label in cols) + " |"
        lines = [head, "| --- |" + " ---: |" * len(cols)]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        return "\n".join(lines)

    def chain_table(self) -> str:
        """The chain against its floors."""
        args = self.bench.args
        depth, delay = args.chain_depth, args.chain_delay
        pure = depth * delay / 1000
        floor_all = median(self.bench.floor_all)
        floor_one = median(self.bench.floor_one)
        lines = [
            "| chain: "
            f"{args.services} listeners, chains {depth} deep, {delay:g} ms each "
            f"| median of {args.chain_reps} | vs. floor, all chains | vs. "
            f"{depth} x {delay:g} ms |",
            "| --- | ---: | ---: | ---: |",
            f"| floor: {depth} x {delay:g} ms of readiness delay | {ms(pure)} | — "
            "| 1.00x |",
            f"| floor: one chain, started by this process | {ms(floor_one)} | — "
            f"| {ratio(divide(floor_one, pure))} |",
            f"| floor: all chains, started by this process | {ms(floor_all)} "
            f"| 1.00x | {ratio(divide(floor_all, pure))} |",
        ]
        for key, label in (
            ("partenza-chain", "partenza (`interval` 100 ms, the default)"),
            ("partenza-chain10", 'partenza, `interval = "10ms"`'),
        ):
            x = self.f(key)
            took, outside = median(x.chain_took), median(x.chain)
            lines.append(
                f"| {label}: its own `took` | {ms(took)} | "
                f"{ratio(divide(took, floor_all))} | {ratio(divide(took, pure))} |"
            )
            lines.append(
                f"| {label}: exec → all ready | {ms(outside)} | "
                f"{ratio(divide(outside, floor_all))} | "
                f"{ratio(divide(outside, pure))} |"
            )
        lines.append(
            "| runit, s6, supervisord | no equivalent | — | — |",
        )
        return "\n".join(lines)

    def targets(self) -> str:
        """Each target of the comparison, Partenza's ratio and whether it is met."""
        p, z = self.f("partenza"), self.f("partenza-delay0")
        runit, s6 = self.f("runit"), self.f("s6")
        floor_all = median(self.bench.floor_all)
        chain = self.f("partenza-chain")
        chain10 = self.f("partenza-chain10")

        def verdict(value: float | None, good: Callable[[float], bool]) -> str:
            """Whether a figure meets its target."""
            if value is None:
                return "not measured"
            return "met" if good(value) else "**missed**"

        cold = divide(median(p.cold), median(s6.cold))
        restart, restart0 = median(p.restart), median(z.restart)
        pss = divide(median(p.pss), median(runit.pss))
        ticks = p.idle.ticks if p.idle else None
        status = median(p.status)
        chain_ratio = divide(median(chain.chain_took), floor_all)
        chain10_ratio = divide(median(chain10.chain_took), floor_all)
        rows = [
            (
                "cold start within 1.5x of s6",
                f"{ms(median(p.cold))} / {ms(median(s6.cold))} = {ratio(cold)}",
                verdict(cold, lambda v: v <= 1.5),
            ),
            (
                "restart median ≤ 5 ms (default restart delay)",
                f"{ms(restart)}",
                verdict(restart, lambda v: v <= 0.005),
            ),
            (
                'restart median ≤ 5 ms (`delay = "0ms"`)',
                f"{ms(restart0)}",
                verdict(restart0, lambda v: v <= 0.005),
            ),
            (
                "PSS below runit's",
                f"{mib(median(p.pss))} / {mib(median(runit.pss))} = {ratio(pss)}",
                verdict(pss, lambda v: v < 1),
            ),
            (
                "no CPU ticks while idle",
                f"{ticks} ticks in {self.bench.args.idle:g} s"
                if ticks is not None
                else "—",
                verdict(ticks, lambda v: v == 0),
            ),
            (
                f"`partenza status` of {self.bench.services} ≤ 50 ms",
                ms(status),
                verdict(status, lambda v: v <= 0.05),
            ),
            (
                "chain within 1.2x of its floor (default interval)",
                f"{ms(median(chain.chain_took))} / {ms(floor_all)} = "
                f"{ratio(chain_ratio)}",
                verdict(chain_ratio, lambda v: v <= 1.2),
            ),
            (
                'chain within 1.2x of its floor (`interval = "10ms"`)',
                f"{ms(median(chain10.chain_took))} / {ms(floor_all)} = "
                f"{ratio(chain10_ratio)}",
                verdict(chain10_ratio, lambda v: v <= 1.2),
            ),
        ]
        lines = ["| target | Partenza | verdict |", "| --- | ---: | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        return "\n".join(lines)

    def markdown(self, svg: str | None) -> str:
        """The whole generated block."""
        b = self.bench
        a = b.args
        parts = [
            f"Measured {self.machine['date']} with `{self.machine['command']}`.",
            "",
            "| machine | |",
            "| --- | --- |",
        ]
        for key in (
            "cpu",
            "memory",
            "kernel",
            "python",
            "partenza",
            "runit",
            "s6",
            "supervisord",
            "perl",
            "scratch",
            "load",
        ):
            parts.append(f"| {key} | {self.machine.get(key, '?')} |")
        parts += [
            "",
            f"{a.services} `sleep 3600` services per tool; {a.reps} repetitions, "
            "the tools in turns, the order rotated each time.",
            "",
            self.table(),
            "",
            self.chain_table(),
            "",
            "Partenza against the targets, each a ratio from this same run:",
            "",
            self.targets(),
            "",
        ]
        if svg:
            parts += [f"![The figures of this run]({svg})", ""]
        if b.problems:
            parts += ["Problems seen during the run:", ""]
            parts += [f"- {problem}" for problem in b.problems] + [""]
        parts.append(self.machine["cleanup"])
        return "\n".join(parts)

    def svg(self) -> str:
        """Six small bar charts, one per measure, drawn from the medians, each
        with its target as a dashed line where there is one."""
        p = self.bench.figures
        args = self.bench.args
        short = {
            "partenza": ("partenza", "#2f6fb0"),
            "partenza-delay0": ("delay 0ms", "#7fb0e0"),
            "runit": ("runit", "#d07a2a"),
            "s6": ("s6", "#4a9a4a"),
            "supervisord": ("supervisord", "#a04a8a"),
        }

        def values(pick: Callable[[Figures], float | None], scale: float) -> Bars:
            """One bar per tool, scaled."""
            out: Bars = []
            for key, _ in self.present():
                value = pick(p[key])
                label, color = short[key]
                out.append((label, color, None if value is None else value * scale))
            return out

        def scaled(value: float | None, scale: float) -> float | None:
            """A figure in the panel's unit."""
            return None if value is None else value * scale

        floor_all = median(self.bench.floor_all)
        chain_bars: Bars = [
            (
                f"{args.chain_depth} x delay",
                "#999999",
                args.chain_depth * args.chain_delay,
            ),
            ("floor", "#666666", scaled(floor_all, 1000)),
        ]
        for key, label, color in (
            ("partenza-chain", "partenza", "#2f6fb0"),
            ("partenza-chain10", "interval 10ms", "#7fb0e0"),
        ):
            took = median(p[key].chain_took) if key in p else None
            chain_bars.append((label, color, scaled(took, 1000)))
        s6_cold = median(p["s6"].cold) if "s6" in p else None
        runit_pss = median(p["runit"].pss) if "runit" in p else None
        panels: list[Panel] = [
            (
                "cold start, ms",
                values(lambda x: median(x.cold), 1000),
                scaled(s6_cold, 1.5 * 1000),
                "1.5x s6",
            ),
            (
                "restart after kill -9, median, ms",
                values(lambda x: median(x.restart), 1000),
                5.0,
                "5 ms",
            ),
            (
                "PSS of the supervisor, MiB",
                values(lambda x: median(x.pss), 1 / 1024),
                scaled(runit_pss, 1 / 1024),
                "runit",
            ),
            (
                f"CPU over {args.idle:g} idle s, ms",
                values(lambda x: x.idle.ns / 1e9 if x.idle else None, 1000),
                None,
                "",
            ),
            (
                f"status of {args.services}, ms",
                values(lambda x: median(x.status), 1000),
                50.0,
                "50 ms",
            ),
            (
                f"chains {args.chain_depth} deep: boot took, ms",
                chain_bars,
                scaled(floor_all, 1.2 * 1000),
                "1.2x floor",
            ),
        ]
        return draw_svg(panels)


def draw_svg(panels: list[Panel]) -> str:
    """Bar charts in a grid of three columns, each bar labelled with its value
    and its name, the target a dashed red line."""
    width, height, columns = 330, 240, 3
    rows = -(-len(panels) // columns)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * columns}" '
        f'height="{height * rows + 10}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width * columns}" height="{height * rows + 10}" fill="white"/>',
    ]
    for index, (title, bars, target, target_label) in enumerate(panels):
        x0 = (index % columns) * width + 10
        y0 = (index // columns) * height + 10
        out.append(
            f'<text x="{x0 + 5}" y="{y0 + 14}" font-size="13" font-weight="bold">'
            f"{html.escape(title)}</text>"
        )
        present = [v for _, _, v in bars if v is not None]
        top = max([*present, target or 0.0]) or 1.0
        plot_top, plot_bottom = y0 + 38, y0 + height - 40
        span = plot_bottom - plot_top
        bar_width = (width - 30) / max(1, len(bars))
        right = x0 + width - 20
        out.append(
            f'<line x1="{x0}" y1="{plot_bottom}" x2="{right}" '
            f'y2="{plot_bottom}" stroke="#333"/>'
        )
        for position, (label, color, value) in enumerate(bars):
            bx = x0 + 5 + position * bar_width
            cx = bx + (bar_width - 8) / 2
            if value is None:
                text, bar_height = "not measured", 0.0
            else:
                bar_height = span * value / top
                text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            out.append(
                f'<rect x="{bx:.1f}" y="{plot_bottom - bar_height:.1f}" '
                f'width="{bar_width - 8:.1f}" height="{bar_height:.1f}" '
                f'fill="{color}"/>'
            )
            out.append(
                f'<text x="{cx:.1f}" y="{plot_bottom - bar_height - 3:.1f}" '
                f'text-anchor="middle" font-size="{10 if value is None else 11}">'
                f"{html.escape(text)}</text>"
            )
            out.append(
                f'<text x="{cx:.1f}" y="{plot_bottom + 14}" text-anchor="middle" '
                f'font-size="10">{html.escape(label)}</text>'
            )
        if target is not None:
            ty = plot_bottom - span * target / top
            out.append(
                f'<line x1="{x0}" y1="{ty:.1f}" x2="{right}" y2="{ty:.1f}" '
                'stroke="#c00" stroke-dasharray="5,3"/>'
            )
            out.append(
                f'<text x="{right}" y="{ty - 3:.1f}" text-anchor="end" '
                f'font-size="10" fill="#c00" stroke="white" stroke-width="3" '
                f'paint-order="stroke">target: {html.escape(target_label)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def describe_machine(bench: Bench, tools: list[Tool], scratch: Path, kind: str) -> dict:
    """The machine, the versions and the conditions of the run."""
    meminfo = read_bytes("/proc/meminfo") or b""
    total = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if b"MemTotal" in line),
        0,
    )
    cpuinfo = (read_bytes("/proc/cpuinfo") or b"").decode(errors="replace")
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    machine = {
        "cpu": f"nproc {len(os.sched_getaffinity(0))}"
        + (f", {model.group(1).strip()}" if model else ""),
        "memory": f"{total / 1024 / 1024:.1f} GiB",
        "kernel": f"Linux {platform.release()}",
        "python": f"{platform.python_version()} ({VENV_PYTHON}), for Partenza and "
        "supervisord alike; bytecode cached in the scratch folder",
        "scratch": f"{scratch} ({kind}): every tool's services, state and sockets",
        "perl": subprocess.run(
            ["perl", "-e", "print $^V"], capture_output=True, text=True, check=False
        ).stdout
        or "none (the chain's listeners are Python)",
    }
    for tool in tools:
        if tool.key in ("runit", "s6", "supervisord"):
            machine[tool.key] = tool.version()
        elif tool.key == "partenza":
            machine["partenza"] = f"{tool.version()}; {source_state()}"
    return machine


def update_doc(path: Path, block: str) -> None:
    """Put `block` between the markers of the document at `path`."""
    text = path.read_text()
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if start < 0 or end < start:
        raise RuntimeError(f"{path} has no {DOC_BEGIN} ... {DOC_END} block")
    text = text[: start + len(DOC_BEGIN)] + "\n" + block + "\n" + text[end:]
    path.write_text(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` changes the defaults, not what is given."""
    parser = argparse.ArgumentParser(
        description="Partenza side by side with supervisord, runit and s6."
    )
    parser.add_argument("--quick", action="store_true", help="a run of under 2 min")
    parser.add_argument("--services", "-n", type=int, default=200, metavar="N")
    parser.add_argument("--reps", type=int, default=None, metavar="R", help="(5)")
    parser.add_argument("--kills", type=int, default=None, metavar="K", help="(100)")
    parser.add_argument(
        "--status-runs", type=int, default=None, metavar="S", help="(20)"
    )
    parser.add_argument(
        "--idle", type=float, default=None, metavar="SECONDS", help="(60)"
    )
    parser.add_argument(
        "--idle-settle", type=float, default=None, metavar="SECONDS", help="(5)"
    )
    parser.add_argument("--chain-depth", type=int, default=10, metavar="D")
    parser.add_argument(
        "--chain-delay", type=float, default=50.0, metavar="MS", help="(50)"
    )
    parser.add_argument("--chain-reps", type=int, default=None, metavar="R")
    parser.add_argument(
        "--tools", default="", help="a subset: partenza,runit,s6,supervisord"
    )
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--doc", type=Path, help="update the marked block of FILE")
    parser.add_argument("--svg", type=Path, help="draw the figures into FILE")
    args = parser.parse_args(argv)
    quick = {
        "reps": 2,
        "kills": 10,
        "status_runs": 6,
        "idle": 10.0,
        "idle_settle": 2.0,
        "chain_reps": 2,
    }
    full = {
        "reps": 5,
        "kills": 100,
        "status_runs": 20,
        "idle": 60.0,
        "idle_settle": IDLE_SETTLE,
        "chain_reps": 5,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.services < args.chain_depth or args.reps < 1 or args.chain_depth < 1:
        parser.error("N must be at least D, and R and D at least 1")
    if args.kills > args.services * args.reps:
        parser.error("at most N kills per repetition")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run everything; 0 unless interrupted, failed or a process was left."""
    args = parse_args(argv)
    if not PARTENZA.exists():
        sys.stderr.write(f"{PARTENZA} is missing; run `make test` to install\n")
        return 2
    load = os.getloadavg()
    root, kind = scratch_root()
    scratch = Path(tempfile.mkdtemp(prefix="partenza-peers-", dir=root))
    bench = Bench(args, scratch)
    tools: list[Tool] = []
    code = 0
    began = time.monotonic()
    try:
        with signals_end_the_run():
            tools = bench.tools()
            bench.warm_up()
            bench.repetitions(tools)
            bench.idle(tools)
            if "partenza" in bench.figures:
                bench.chain()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        print("error; cleaning up", file=sys.stderr)
        code = 1
    finally:
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in stops}
        try:
            bench.reaper.cleanup()
            verdict = bench.reaper.verdict()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    machine = describe_machine(bench, tools, root, kind)
    after = os.getloadavg()
    machine["load"] = (
        f"{load[0]:.2f} / {load[1]:.2f} before, {after[0]:.2f} / {after[1]:.2f} "
        f"after (1 / 5 min); the run took {time.monotonic() - began:.0f} s"
    )
    machine["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = ["bench/peers.py"] + (argv if argv is not None else sys.argv[1:])
    machine["command"] = ".venv/bin/python " + " ".join(shown)
    machine["cleanup"] = verdict
    report = Report(bench, machine)
    svg_name = None
    if args.svg:
        args.svg.write_text(report.svg())
        svg_name = os.path.relpath(args.svg, args.doc.parent if args.doc else ROOT)
    block = report.markdown(svg_name)
    print(block)
    if args.doc:
        update_doc(args.doc, block)
    if args.keep:
        print(f"scratch folder kept: {scratch}", file=sys.stderr)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    if "LEFT" in verdict:
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
