"""Boot benchmark: how fast and how big `partenza boot` is with N modules.

Usage:

    .venv/bin/python bench/boot.py [--modules N] [--runs R] [--chain D]
                                   [--ready started|tcp]

It writes a plan of N long-lived modules into a fresh scratch folder (on
tmpfs when one is writable: /dev/shm, then /run), then R times boots it twice,
once compiled afresh (`--no-cache`) and once from the plan cache the first
boot wrote, each as `partenza boot PLAN` with its own PARTENZA_RUNTIME_DIR and
PARTENZA_STATE_DIR. For every boot it measures:

- the plan load, as the orchestrator's banner reports it;
- the time from starting `partenza boot` until its control socket answers,
  until the orchestrator starts, and until every module is ready, seen from
  outside through the event stream, and the orchestrator's own `took`;
- the orchestrator's peak RSS (VmHWM), RSS and PSS once every module is ready;
- `partenza status` (the console script, median of 20) and the same request
  sent over the socket from this process (median of 20);
- an orderly `partenza shutdown`, until the boot process has exited and no
  module process is left.

The modules are `sleep 3600` with readiness `started`, or with `--ready tcp`
a small Python listener each on a free loopback port with a `tcp` check. With
`--chain D` each module requires the one before it, in chains D deep.

Python bytecode is cached in the scratch folder (PYTHONPYCACHEPREFIX), as an
installed system would have it, even where PYTHONDONTWRITEBYTECODE is set;
`--bytecode env` leaves the environment as it is. `--keep` keeps the scratch
folder with the plan, each boot's console output and its state dir.

Everything it starts is ended by PID or process group when it finishes, on an
error or on Ctrl-C; at the end it checks that no process is left and says so.
It reports figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PARTENZA = VENV_BIN / "partenza"
VENV_PYTHON = VENV_BIN / "python"
sys.path.insert(0, str(ROOT))

from partenza.client import Client, ClientError, NotRunning  # noqa: E402
from partenza.process import become_subreaper, group_alive  # noqa: E402

AVOID_PORTS = frozenset({8421})
"""The demo's port: never handed to a module."""
STATUS_RUNS = 20
POLL = 0.002
WARM_UP = (
    "import partenza.cli, partenza.boot, partenza.client, partenza.render, "
    "partenza.manifest"
)
BANNER = re.compile(r"(cached plan|compiled) in (\d+)ms\)")

LISTENER = '''\
"""A module for the benchmark: accept and close TCP connections on one port."""

import socket
import sys

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(128)
while True:
    connection, _ = server.accept()
    connection.close()
'''


# Processes: everything this benchmark starts, and how it is ended.


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state letter) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[2]), fields[0].decode()


def descendants(root: int) -> dict[int, str]:
    """Every descendant of `root`, zombies included, to its state letter."""
    parents: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None:
            continue
        parents.setdefault(stat[0], []).append(int(entry))
        states[int(entry)] = stat[2]
    found: dict[int, str] = {}
    queue = [root]
    while queue:
        for pid in parents.get(queue.pop(), ()):
            if pid not in found:
                found[pid] = states[pid]
                queue.append(pid)
    return found


def _signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    """Send `sig` to a process that may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Reaper:
    """Keeps the PIDs and process groups this benchmark started, and ends them."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.subreaper = become_subreaper()
        self.boots: list[subprocess.Popen[bytes]] = []
        self.module_groups: set[int] = set()
        self.groups_seen = 0

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Remember a `partenza boot` process."""
        self.boots.append(proc)

    def modules(self, pids: list[int]) -> None:
        """Remember module process groups (each module leads a group of its own)."""
        self.groups_seen += len(set(pids) - self.module_groups)
        self.module_groups.update(pids)

    def forget(self, pgids: set[int]) -> None:
        """Drop groups seen gone, so a reused number is never signalled."""
        self.module_groups -= pgids

    def cleanup(self) -> None:
        """End every boot, every module and every descendant still alive."""
        for proc in self.boots:
            if proc.poll() is None:
                # An orderly shutdown first: the orchestrator stops its modules.
                _signal_pid(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for proc in self.boots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
        # A module group is signalled only while its leader is still ours.
        ours = descendants(self.me)
        for pgid in self.module_groups:
            if pgid in ours and group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        for _ in range(50):
            left = descendants(self.me)
            if not left:
                break
            for pid, state in left.items():
                if state != "Z":
                    _signal_pid(pid, signal.SIGKILL)
            self._reap(left)
            time.sleep(0.02)

    def _reap(self, pids: dict[int, str]) -> None:
        """Collect adopted orphans that have ended; boots are waited for elsewhere."""
        tracked = {proc.pid for proc in self.boots}
        for pid in pids:
            if pid in tracked:
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def verify(self) -> str:
        """A sentence saying whether anything this benchmark started is still alive."""
        alive_boots = [proc.pid for proc in self.boots if proc.poll() is None]
        left = descendants(self.me)
        alive_groups = sorted(g for g in self.module_groups if g in left)
        if not (alive_boots or alive_groups or left):
            return (
                f"cleanup: no process left ({len(self.boots)} boots and "
                f"{self.groups_seen} module process groups checked, and no "
                f"descendant of pid {self.me}"
                f"{'; this process was a child subreaper' if self.subreaper else ''})"
            )
        return (
            f"cleanup: PROCESSES LEFT: boots {alive_boots}, module groups "
            f"{alive_groups[:20]}, descendants {sorted(left)[:20]}"
        )


# The plan.


def scratch_root() -> tuple[Path, str]:
    """A writable folder on tmpfs if there is one, and its file system type."""
    for candidate in (Path("/dev/shm"), Path("/run")):
        if (
            candidate.is_dir()
            and os.access(candidate, os.W_OK | os.X_OK)
            and fs_type(candidate) == "tmpfs"
        ):
            return candidate, "tmpfs"
    fallback = Path(tempfile.gettempdir())
    return fallback, fs_type(fallback)


def fs_type(path: Path) -> str:
    """The type of the file system `path` is on, from /proc/self/mounts."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that nothing listens on right now."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            held.append(probe)
            port = probe.getsockname()[1]
            if port not in AVOID_PORTS:
                ports.append(port)
    finally:
        for probe in held:
            probe.close()
    return ports


def module_name(index: int) -> str:
    """The name of the module at `index`: m0000, m0001, ..."""
    return f"m{index:04d}"


def write_plan(folder: Path, modules: int, chain: int, ready: str) -> None:
    """N manifests and a `plan.toml`; with `chain` > 1, chains of requirements."""
    folder.mkdir(parents=True)
    (folder / "plan.toml").write_text(
        'name = "bench"\n'
        f'description = "{modules} modules, chains {chain} deep, ready {ready}"\n'
    )
    ports = free_ports(modules) if ready == "tcp" else []
    if ready == "tcp":
        (folder / "listener.py").write_text(LISTENER)
    for index in range(modules):
        lines = [f'description = "benchmark module {index}"']
        if ready == "tcp":
            lines.append(f'exec = "${{python}} -S listener.py {ports[index]}"')
        else:
            lines.append('exec = "sleep 3600"')
        if index % chain:
            lines.append(f'requires = ["{module_name(index - 1)}"]')
        if ready == "tcp":
            lines += ["", "[ready]", 'kind = "tcp"', f"port = {ports[index]}"]
            lines.append('timeout = "60s"')
        (folder / f"{module_name(index)}.toml").write_text("\n".join(lines) + "\n")


# One boot, measured.


@dataclass
class Boot:
    """The figures of one boot; None where a figure could not be taken."""

    mode: str
    plan_load_ms: float | None = None
    socket_s: float | None = None
    orchestrator_start_s: float | None = None
    took_s: float | None = None
    ready_s: float | None = None
    fds: int | None = None
    hwm_kib: int | None = None
    rss_kib: int | None = None
    pss_kib: int | None = None
    status_cli_s: float | None = None
    status_request_s: float | None = None
    shutdown_cli_s: float | None = None
    shutdown_s: float | None = None
    spawn_ratio: float | None = None
    ready_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Floors:
    """What the same machine does without Partenza, measured next to the boots."""

    spawn_s: float
    """Starting N `sleep` processes with `Popen` as the orchestrator does."""
    cli_s: float
    """`partenza --version`: the start of the console script, nothing more."""


class Watcher(threading.Thread):
    """Follows the event stream until the `boot` event: the outside view of a boot."""

    def __init__(self, client: Client) -> None:
        super().__init__(name="watcher", daemon=True)
        self.client = client
        self.done_at: float | None = None
        self.boot_event: dict[str, Any] | None = None
        self.system: dict[str, Any] = {}
        self.events = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Wait for the `boot` event and note when it came."""
        try:
            stream = self.client.stream("subscribe")
            snapshot = next(stream)
            self.system = snapshot.get("system", {})
            if self.system.get("boot_took") is not None:
                self.done_at = time.monotonic()
                return
            for message in stream:
                event = message.get("event")
                if event is None:
                    continue
                self.events += 1
                if event.get("type") == "boot":
                    self.done_at = time.monotonic()
                    self.boot_event = event
                    return
        except (ClientError, OSError, ValueError) as exc:
            self.error = exc


def memory(pid: int) -> tuple[int | None, int | None, int | None]:
    """(VmHWM, VmRSS, Pss) of a process in KiB."""
    hwm = rss = pss = None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return hwm, rss, pss


def timed(action: Callable[[], object], runs: int) -> float:
    """The median time of `runs` calls of `action`, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the console script `partenza ARGS` and wait for it."""
    return subprocess.run(
        [str(PARTENZA), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Drain(threading.Thread):
    """Reads the boot's console so it never blocks, keeping a bounded part of it.

    The first and the last `KEEP` bytes are kept and written to `path` at the
    end; a console that runs wild cannot fill the scratch folder's memory.
    """

    KEEP = 256 * 1024
    TRACEBACK = b"Traceback (most recent call last)"

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        super().__init__(name="console drain", daemon=True)
        self.stream = stream
        self.path = path
        self.head = b""
        self.tail = b""
        self.total = 0
        self.tracebacks = 0
        self.dropped = False

    def run(self) -> None:
        """Read until the boot closes its output, then write what was kept."""
        carry = b""
        while chunk := self.stream.read1(65536):
            self.total += len(chunk)
            seen = carry + chunk
            self.tracebacks += seen.count(self.TRACEBACK)
            carry = seen[-(len(self.TRACEBACK) - 1) :]
            if len(self.head) < self.KEEP:
                room = self.KEEP - len(self.head)
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail = (self.tail + chunk)[-self.KEEP :]
                self.dropped = self.total > 2 * self.KEEP
        self.stream.close()
        gap = b"\n[... bytes left out ...]\n" if self.dropped else b""
        with contextlib.suppress(OSError):
            self.path.write_bytes(self.head + gap + self.tail)


class Bench:
    """Boots one plan again and again and keeps the figures."""

    def __init__(
        self,
        plan: Path,
        scratch: Path,
        modules: int,
        reaper: Reaper,
        timeout: float,
        bytecode: str,
    ) -> None:
        self.plan = plan
        self.scratch = scratch
        self.modules = modules
        self.reaper = reaper
        self.timeout = timeout
        self.bytecode = bytecode
        self._groups: set[int] = set()
        self._watcher: Watcher | None = None

    def environment(self, run: int) -> tuple[dict[str, str], Path]:
        """The environment of run `run`'s boot and CLI calls, and its socket."""
        base = self.scratch / f"run{run}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTENZA_")}
        env["PARTENZA_RUNTIME_DIR"] = str(base / "runtime")
        env["PARTENZA_STATE_DIR"] = str(base / "state")
        env["NO_COLOR"] = "1"
        if self.bytecode == "scratch":
            # Bytecode is cached as on an installed system, but in the scratch
            # folder: the source tree is left as it is.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.scratch / "pycache")
        return env, base / "runtime" / "control.sock"

    def warm_up(self) -> None:
        """Import once what the boot and the CLI import.

        The first run is then no outlier, and with bytecode in the scratch
        folder that cache is filled.
        """
        env, _ = self.environment(0)
        subprocess.run(
            [str(VENV_PYTHON), "-c", WARM_UP],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )

    def floors(self) -> Floors:
        """Time N bare spawns and the console script's start, on this machine now."""
        env, _ = self.environment(0)
        children: list[subprocess.Popen[bytes]] = []
        started = time.perf_counter()
        try:
            for _ in range(self.modules):
                child = subprocess.Popen(
                    ["sleep", "3600"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
                children.append(child)
                self.reaper.modules([child.pid])
            spawn = time.perf_counter() - started
        finally:
            for child in children:
                _signal_group(child.pid, signal.SIGKILL)
            for child in children:
                child.wait()
                for stream in (child.stdout, child.stderr):
                    if stream is not None:
                        stream.close()
            self.reaper.forget({child.pid for child in children})
        cli = timed(lambda: run_cli(["--version"], env), STATUS_RUNS)
        return Floors(spawn, cli)

    def boot(self, run: int, cold: bool) -> Boot:
        """Boot the plan, measure it, shut it down."""
        result = Boot("cold" if cold else "cached")
        env, sock = self.environment(run)
        output = self.scratch / f"run{run}" / f"boot-{result.mode}.out"
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(PARTENZA), "boot", str(self.plan)] + (
            ["--no-cache"] if cold else []
        )
        wall_started = time.time()
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.reaper.track(proc)
        assert proc.stdout is not None
        console = Drain(proc.stdout, output)
        console.start()
        self._groups = set()
        self._watcher = None
        orderly = False
        try:
            self._measure(result, proc, sock, env, started, wall_started)
            orderly = True
        finally:
            self._shutdown(result, proc, env, orderly=orderly)
            console.join(5.0)
        if console.tracebacks:
            result.problems.append(
                f"the console showed {console.tracebacks} Python tracebacks"
            )
        if console.dropped:
            result.problems.append(
                f"the console wrote {console.total} bytes; kept the first and "
                f"last {Drain.KEEP} in {output}"
            )
        match = BANNER.search(console.head.decode(errors="replace"))
        if match:
            result.plan_load_ms = float(match.group(2))
            if (match.group(1) == "compiled") != cold:
                result.problems.append(f"banner says {match.group(1)}")
        return result

    def _connect(self, proc: subprocess.Popen[bytes], sock: Path) -> Client:
        """Connect as soon as the control socket accepts."""
        deadline = time.monotonic() + self.timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"partenza boot exited {proc.returncode} early")
            if sock.exists():
                try:
                    return Client(sock, timeout=30.0)
                except NotRunning:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("the control socket never answered")
            time.sleep(POLL)

    def _measure(
        self,
        result: Boot,
        proc: subprocess.Popen[bytes],
        sock: Path,
        env: dict[str, str],
        started: float,
        wall_started: float,
    ) -> None:
        """Time the boot, take the memory, time `status`: all while it runs."""
        client = self._connect(proc, sock)
        result.socket_s = time.monotonic() - started
        watcher = Watcher(client)
        self._watcher = watcher
        watcher.start()
        watcher.join(self.timeout)
        if not watcher.is_alive():
            client.close()
        if watcher.error is not None:
            raise RuntimeError(f"event stream: {watcher.error}")
        if watcher.done_at is None:
            result.problems.append(f"not booted after {self.timeout:.0f}s")
            return
        result.ready_s = watcher.done_at - started
        if watcher.boot_event is None:
            result.problems.append("connected after the boot; outside time is late")

        # Memory once every module is ready, before anyone asks for more.
        result.hwm_kib, result.rss_kib, result.pss_kib = memory(proc.pid)
        with contextlib.suppress(OSError):
            result.fds = len(os.listdir(f"/proc/{proc.pid}/fd"))

        with Client(sock, timeout=30.0) as status:
            snapshot = status.request("status")
            if snapshot["system"]["pid"] != proc.pid:
                result.problems.append("the orchestrator's pid is not the boot's")
            system = snapshot["system"]
            result.orchestrator_start_s = system["boot_started"] - wall_started
            result.took_s = system["boot_took"]
            result.counts = system["counts"]
            records = snapshot["modules"]
            result.ready_count = sum(1 for m in records if m["state"] == "ready")
            self._groups = {m["pid"] for m in records if m["pid"]}
            self.reaper.modules(list(self._groups))
            result.status_request_s = timed(
                lambda: status.request("status"), STATUS_RUNS
            )

        def status_cli() -> None:
            """One `partenza status`, its table checked for every module."""
            done = run_cli(["status"], env)
            if done.returncode != 0 or done.stdout.count("\n") < self.modules:
                result.problems.append(f"status exited {done.returncode}")

        result.status_cli_s = timed(status_cli, STATUS_RUNS)

    def _shutdown(
        self,
        result: Boot,
        proc: subprocess.Popen[bytes],
        env: dict[str, str],
        *,
        orderly: bool,
    ) -> None:
        """`partenza shutdown`, timed; SIGTERM to the boot when the boot went wrong."""
        if proc.poll() is not None:
            result.exit_code = proc.returncode
            return
        groups = self._groups
        started = time.monotonic()
        if orderly:
            try:
                done = run_cli(["shutdown"], env, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                result.problems.append("`partenza shutdown` did not return")
                _signal_pid(proc.pid, signal.SIGTERM)
            else:
                result.shutdown_cli_s = time.monotonic() - started
                if done.returncode != 0:
                    result.problems.append(
                        f"shutdown exited {done.returncode}: {done.stderr.strip()}"
                    )
        else:
            _signal_pid(proc.pid, signal.SIGTERM)
        deadline = started + self.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None and not any(group_alive(g) for g in groups):
                if orderly:
                    result.shutdown_s = time.monotonic() - started
                self.reaper.forget(groups)
                break
            time.sleep(POLL / 2)
        else:
            result.problems.append("the boot or a module outlived the shutdown")
        result.exit_code = proc.poll()
        if self._watcher is not None and self._watcher.is_alive():
            self._watcher.join(5.0)
            if not self._watcher.is_alive():
                self._watcher.client.close()


# Reporting.


def median(values: list[float | int | None]) -> float | None:
    """The median of the figures taken, or None if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def seconds(value: float | None) -> str:
    """Seconds shown in ms below one second."""
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


def mebibytes(value: float | None) -> str:
    """KiB shown as MiB."""
    return "—" if value is None else f"{value / 1024:.1f} MiB"


def ratio(value: float | None) -> str:
    """A ratio, to two places."""
    return "—" if value is None else f"{value:.2f}x"


def count(value: float | None) -> str:
    """A count."""
    return "—" if value is None else f"{value:.0f}"


def milliseconds(value: float | None) -> str:
    """Milliseconds, whole."""
    return "—" if value is None else f"{value:.0f} ms"


ROWS: list[tuple[str, str, Callable[[float | None], str]]] = [
    ("plan load (orchestrator's banner)", "plan_load_ms", milliseconds),
    ("exec → control socket answers", "socket_s", seconds),
    ("exec → orchestrator starts", "orchestrator_start_s", seconds),
    ("orchestrator's own `took`", "took_s", seconds),
    ("`took` / as many bare `Popen`s", "spawn_ratio", ratio),
    ("exec → every module ready (outside)", "ready_s", seconds),
    ("open file descriptors when ready", "fds", count),
    ("peak RSS (VmHWM)", "hwm_kib", mebibytes),
    ("RSS when ready", "rss_kib", mebibytes),
    ("PSS when ready", "pss_kib", mebibytes),
    (f"`partenza status` (median of {STATUS_RUNS})", "status_cli_s", seconds),
    (
        f"status request on the socket (median of {STATUS_RUNS})",
        "status_request_s",
        seconds,
    ),
    ("`partenza shutdown` command", "shutdown_cli_s", seconds),
    ("shutdown → boot exited, no module left", "shutdown_s", seconds),
]


def table(boots: list[Boot]) -> str:
    """The medians, cold against cached, as a markdown table."""
    lines = [
        "| measure | cold (`--no-cache`) | cached |",
        "| --- | ---: | ---: |",
    ]
    for label, attribute, show in ROWS:
        cells = []
        for mode in ("cold", "cached"):
            values = [getattr(b, attribute) for b in boots if b.mode == mode]
            cells.append(show(median(values)))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def describe(boot: Boot, run: int) -> str:
    """One progress line about one boot."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(boot.counts.items())) or "?"
    text = (
        f"run {run} {boot.mode}: ready {seconds(boot.ready_s)} (took "
        f"{seconds(boot.took_s)}), PSS {mebibytes(boot.pss_kib)}, status "
        f"{seconds(boot.status_cli_s)}, shutdown {seconds(boot.shutdown_s)}, "
        f"exit {boot.exit_code}; {counts}"
    )
    if boot.problems:
        text += "; " + "; ".join(boot.problems)
    return text


def machine(scratch: Path, kind: str, bytecode: str, load: float) -> str:
    """A line about the machine and the conditions of the run."""
    version = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpus = len(os.sched_getaffinity(0))
    if bytecode == "scratch":
        pyc = "bytecode cached in the scratch folder (PYTHONPYCACHEPREFIX)"
    elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
        pyc = "bytecode not cached (PYTHONDONTWRITEBYTECODE is set)"
    else:
        pyc = "bytecode as the environment has it"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"machine: nproc {cpus}, Python {version} ({VENV_PYTHON}), Linux "
        f"{platform.release()}, open files limit {soft}, load average "
        f"{load:.2f} before and {os.getloadavg()[0]:.2f} after; runtime and state dirs "
        f"under {scratch} ({kind}); {pyc}; {source_state()}"
    )


def source_state() -> str:
    """The commit checked out and a digest of the partenza sources as measured."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "partenza").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"sources: HEAD {head or '?'}, partenza/*.py sha256 {digest.hexdigest()[:12]}"
    )


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: with the cleanup."""

    def stop(signum: int, frame: object) -> None:
        """End the run from wherever it is."""
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark `partenza boot`, status and shutdown on N modules."
    )
    parser.add_argument(
        "--modules", "-n", type=int, default=200, metavar="N", help="modules (200)"
    )
    parser.add_argument(
        "--runs",
        "-r",
        type=int,
        default=3,
        metavar="R",
        help="runs, each a cold and a cached boot (3)",
    )
    parser.add_argument(
        "--chain",
        type=int,
        default=1,
        metavar="D",
        help="modules form requirement chains D deep (1: independent)",
    )
    parser.add_argument(
        "--ready",
        choices=("started", "tcp"),
        default="started",
        help="`sleep` ready once started (default), or TCP listeners on loopback",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="how long a boot or a shutdown may take (default: 60s + 0.1s a module)",
    )
    parser.add_argument(
        "--bytecode",
        choices=("scratch", "env"),
        default="scratch",
        help="cache Python bytecode in the scratch folder (default), or leave "
        "the environment's setting (PYTHONDONTWRITEBYTECODE) as it is",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder and its logs"
    )
    args = parser.parse_args(argv)
    if args.modules < 1 or args.runs < 1 or not 1 <= args.chain <= args.modules:
        parser.error("N and R must be 1 or more, and D between 1 and N")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 unless it was interrupted, failed or left a process."""
    args = parse_args(argv)
    if not PARTENZA.exists():
        sys.stderr.write(f"{PARTENZA} is missing; run `make test` to install\n")
        return 2
    load = os.getloadavg()[0]
    root, kind = scratch_root()
    scratch = Path(tempfile.mkdtemp(prefix="partenza-bench-", dir=root))
    reaper = Reaper()
    boots: list[Boot] = []
    floors: list[Floors] = []
    code = 0
    timeout = args.timeout or 60.0 + 0.1 * args.modules
    try:
        with signals_end_the_run():
            plan = scratch / "plan"
            write_plan(plan, args.modules, args.chain, args.ready)
            bench = Bench(plan, scratch, args.modules, reaper, timeout, args.bytecode)
            bench.warm_up()
            for run in range(1, args.runs + 1):
                floors.append(bench.floors())
                for cold in (True, False):
                    boot = bench.boot(run, cold)
                    boot.spawn_ratio = (
                        boot.took_s / floors[-1].spawn_s if boot.took_s else None
                    )
                    boots.append(boot)
                    print(describe(boot, run), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError, ClientError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}; cleaning up", file=sys.stderr)
        code = 1
    except Exception:
        traceback.print_exc()
        print("error; cleaning up", file=sys.stderr)
        code = 1
    finally:
        # The cleanup runs to its end: a second Ctrl-C must not cut it short.
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in stops}
        try:
            reaper.cleanup()
            verdict = reaper.verify()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if boots:
        chains = -(-args.modules // args.chain)
        shape = (
            "independent"
            if args.chain == 1
            else f"in {chains} requirement chains {args.chain} deep"
        )
        print(
            f"\n### partenza boot: {args.modules} modules, ready `{args.ready}`, "
            f"{shape}; median of {args.runs} runs\n"
        )
        print(table(boots))
        print()
    if floors:
        spawn = statistics.median(f.spawn_s for f in floors)
        start = statistics.median(f.cli_s for f in floors)
        print(
            f"floors, measured in each run next to the boots: {args.modules} bare "
            f"`Popen` of `sleep 3600` (pipes, new session, as the orchestrator "
            f"spawns) {seconds(spawn)}; `partenza --version` (median of "
            f"{STATUS_RUNS}) {seconds(start)}\n"
        )
    print(machine(root, kind, args.bytecode, load))
    print(verdict)
    if args.keep:
        print(f"scratch folder kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    if "LEFT" in verdict:
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
