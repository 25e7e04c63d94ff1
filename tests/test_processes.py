"""The orchestrator against real processes, through `partenza boot`."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from pathlib import Path

from partenza import listeners
from tests.conftest import Booted, free_port, pids_alive, write_plan

SERVE = """
import socket, sys, time
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0
time.sleep(delay)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
while True:
    conn, _ = server.accept()
    conn.close()
"""

DAEMONIZE = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pidfile + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(1000)
    os._exit(0)
os.wait()
if sys.argv[2] == "stay":
    time.sleep(1000)
"""

FLOOD = """
import sys
line = b"x" * 1023 + b"\\n"
write = sys.stdout.buffer.write
for _ in range(100 * 1024):
    write(line)
sys.stdout.flush()
"""


def script(plan: Path, name: str, text: str) -> str:
    path = plan / f"{name}.py"
    path.write_text(text)
    return str(path)


def _read(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def test_each_readiness_kind_waits_for_its_signal(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    serve = script(plan, "serve", SERVE)
    port = free_port()
    flag = tmp_path / "flag"
    write_plan(
        plan,
        {
            "tcp": f"""
                exec = ["{sys.executable}", "{serve}", "{port}", "0.3"]
                ready = {{ kind = "tcp", port = {port}, interval = "20ms" }}
            """,
            "file": f"""
                exec = ["sh", "-c", "sleep 0.3; touch {flag}; exec sleep 1000"]
                ready = {{ kind = "file", path = "{flag}", interval = "20ms" }}
            """,
            "exec": f"""
                exec = ["sh", "-c", "sleep 0.3; touch {flag}.2; exec sleep 1000"]
                [ready]
                kind = "exec"
                command = "test -f {flag}.2"
                interval = "20ms"
            """,
            "log": """
                exec = [
                    "sh", "-c",
                    "sleep 0.3; echo warming; echo now listening; exec sleep 1000",
                ]
                ready = { kind = "log", pattern = "listening$" }
            """,
        },
    )
    booted: Booted = boot(plan)
    for name in ("tcp", "file", "exec", "log"):
        record = booted.wait_state(name, "ready")
        took = record["ready_at"] - record["started_at"]
        assert took >= 0.25, f"{name} was ready after {took:.3f}s, before its signal"
    assert booted.module("tcp")["reason"] == f"tcp 127.0.0.1:{port} answered"
    assert booted.module("log")["reason"] == "log line matched: now listening"
    assert booted.module("file")["reason"] == f"file {flag} appeared"


def test_a_ready_timeout_fails_the_start_and_kills_the_process(
    tmp_path: Path, boot
) -> None:
    port = free_port()
    plan = write_plan(
        tmp_path / "plan",
        {
            "deaf": f"""
                exec = "sleep 1000"
                restart = {{ policy = "never" }}
                [ready]
                kind = "tcp"
                port = {port}
                timeout = "400ms"
                interval = "50ms"
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("deaf", "failed")
    assert record["reason"] == (
        f"not ready after 400ms (tcp 127.0.0.1:{port}: nothing listens on the port)"
    )
    assert record["failure"]["stage"] == "ready check"
    logs = booted.request("logs", module="deaf")["lines"]
    pid = int(logs[0]["text"].split()[2].rstrip(":"))
    assert not pids_alive([pid])


def test_failed_requirement_blocks_the_chain_and_the_cli_says_why(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "db": """
                exec = ["sh", "-c", "echo db: cannot open data dir >&2; exit 1"]
                restart = { delay = "20ms", limit = 3 }
            """,
            "api": 'exec = "sleep 1000"\nrequires = ["db"]\n',
            "web": 'exec = "sleep 1000"\nrequires = ["api"]\n',
        },
    )
    booted = boot(plan)
    booted.wait_state("web", "blocked")
    status = booted.cli("status")
    assert status.returncode == 0
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[2:]}
    assert " failed " in lines["db"] and "exited 1 after 2 restarts" in lines["db"]
    assert "requires db, which failed" in lines["api"]
    why = booted.cli("why", "web")
    assert why.stdout.splitlines() == [
        "web blocked: requires api, which is blocked",
        "  <- api blocked: requires db, which failed",
        "    <- db failed: exited 1 after 2 restarts; start limit spent (3 in 1m00s)",
    ]
    assert "[FAILED] db: exited 1 after 2 restarts" in booted.output
    assert "blocked: api, web" in booted.output
    assert "[DEPEND] api: blocked, requires db, which failed" in booted.output
    failure = booted.module("db")["failure"]
    assert failure["logs"][-1] == "db: cannot open data dir"


def test_a_module_that_ignores_sigterm_is_killed_after_its_stop_timeout(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "stubborn": """
                exec = ["sh", "-c", "trap '' TERM; sleep 1000 & wait; sleep 1000"]
                stop = { timeout = "1s" }
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("stubborn", "ready")
    time.sleep(0.2)
    pgid = record["pid"]
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid]
    assert len(members) >= 2
    started = time.monotonic()
    result = booted.cli("stop", "stubborn")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took >= 1.0
    record = booted.module("stubborn")
    assert record["state"] == "stopped"
    assert (
        "killed with SIGKILL after 1.0s" in record["reason"]
        or "SIGKILL" in record["reason"]
    )
    assert not pids_alive(members)


def _pgid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None


def test_a_double_forked_daemon_is_gone_after_its_module_stops(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    daemon = script(plan, "daemonize", DAEMONIZE)
    pidfile = tmp_path / "daemon.pid"
    write_plan(
        plan,
        {"forker": f'exec = ["{sys.executable}", "{daemon}", "{pidfile}", "stay"]\n'},
    )
    booted = boot(plan)
    booted.wait_state("forker", "ready")
    grandchild = int(_read(pidfile))
    assert pids_alive([grandchild])
    assert _pgid(str(grandchild)) != booted.module("forker")["pid"], "it left the group"
    assert booted.cli("stop", "forker").returncode == 0
    deadline = time.monotonic() + 5
    while pids_alive([grandchild]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_alive([grandchild])


def test_what_a_crashed_module_left_behind_is_swept_before_it_restarts(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    daemon = script(plan, "daemonize", DAEMONIZE)
    pidfile = tmp_path / "daemon.pid"
    write_plan(
        plan,
        {
            "leaver": f"""
                exec = ["{sys.executable}", "{daemon}", "{pidfile}", "leave"]
                restart = {{ policy = "never" }}
                stop = {{ timeout = "2s" }}
            """,
        },
    )
    booted = boot(plan)
    grandchild = int(_read(pidfile))
    booted.wait_state("leaver", "stopped")
    assert not pids_alive([grandchild])
    notes = [line["text"] for line in booted.request("logs", module="leaver")["lines"]]
    assert "processes left behind; stopping them" in notes


def test_a_hundred_megabytes_of_output_never_blocks_and_memory_stays_bounded(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    flood = script(plan, "flood", FLOOD)
    write_plan(plan, {"flood": f'exec = ["{sys.executable}", "{flood}"]\n'})
    (plan / "plan.toml").write_text(
        '[logs]\nring_lines = 500\nfile_size = "8MiB"\nfile_keep = 2\n'
    )
    booted = boot(plan)
    record = booted.wait_state("flood", "stopped", timeout=120)
    assert record["reason"] == "exited 0; finished"
    lines = booted.request("logs", module="flood", lines=None)["lines"]
    assert len(lines) == 500
    assert lines[-2]["text"] == "x" * 1023
    with open(f"/proc/{booted.proc.pid}/status") as handle:
        peak = next(
            int(line.split()[1]) for line in handle if line.startswith("VmHWM:")
        )
    assert peak < 120 * 1024, f"the orchestrator peaked at {peak} kB"
    logs = booted.base / "state" / "logs"
    files = sorted(p.name for p in logs.iterdir())
    assert files == ["flood.log", "flood.log.1", "flood.log.2"]
    assert all((logs / name).stat().st_size <= 8 * 1024 * 1024 for name in files)


def test_bytes_that_are_not_utf8_survive_in_the_file_and_show_escaped(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "raw": """
                exec = [
                    "sh", "-c", "printf 'caf\\\\351 \\\\377 ok\\\\n'; exec sleep 1000"
                ]
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("raw", "ready")
    deadline = time.monotonic() + 5
    texts: list[str] = []
    while time.monotonic() < deadline:
        lines = booted.request("logs", module="raw")["lines"]
        texts = [line["text"] for line in lines]
        if "caf\\xe9 \\xff ok" in texts:
            break
        time.sleep(0.05)
    assert "caf\\xe9 \\xff ok" in texts
    logfile = booted.base / "state" / "logs" / "raw.log"
    deadline = time.monotonic() + 5
    while (
        b"caf\xe9 \xff ok\n" not in logfile.read_bytes() and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert b" out caf\xe9 \xff ok\n" in logfile.read_bytes()


def test_an_overlong_line_is_split(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "long": """
                exec = [
                    "sh", "-c",
                    "head -c 40000 /dev/zero | tr '\\\\0' y; echo; exec sleep 1000",
                ]
            """,
        },
    )
    (plan / "plan.toml").write_text('[logs]\nmax_line = "16KiB"\n')
    booted = boot(plan)
    booted.wait_state("long", "ready")
    deadline = time.monotonic() + 5
    pieces: list[int] = []
    while time.monotonic() < deadline:
        lines = booted.request("logs", module="long")["lines"]
        pieces = [len(line["text"]) for line in lines if line["stream"] == "out"]
        if sum(pieces) >= 40000:
            break
        time.sleep(0.05)
    assert pieces == [16384, 16384, 40000 - 2 * 16384]


def test_exit_zero_under_always_backs_off_instead_of_spinning(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "blink": """
                exec = "true"
                [restart]
                policy = "always"
                delay = "100ms"
                limit = 5
                window = "30s"
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("blink", "failed", timeout=10)
    assert record["restarts"] == 4
    assert record["reason"] == "exited 0 after 4 restarts; start limit spent (5 in 30s)"
    with booted.client() as client:
        stream = client.stream("subscribe", since=0)
        next(stream)
        events = []
        for message in stream:
            event = message["event"]
            events.append(event)
            if event["type"] == "state" and event["new"] == "failed":
                break
    starts = [
        e["time"] for e in events if e["type"] == "state" and e["new"] == "initializing"
    ]
    delays = [e["delay"] for e in events if e["type"] == "state" and "delay" in e]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 4
    assert all(gap >= delay * 0.95 for gap, delay in zip(gaps, delays, strict=True))


def test_orphans_of_a_module_are_reaped(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "parent": """
                exec = [
                    "sh", "-c",
                    "for i in 1 2 3 4 5; do (sleep 0.1 &); done; exec sleep 1000",
                ]
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("parent", "ready")
    time.sleep(0.6)
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == booted.proc.pid and fields[0] == "Z":
            zombies.append(entry)
    assert zombies == []


def test_shutdown_leaves_no_process_of_the_plan(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    daemon = script(plan, "daemonize", DAEMONIZE)
    write_plan(
        plan,
        {
            "a": 'exec = "sleep 1000"\n',
            "b": """
                exec = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]
                requires = ["a"]
            """,
            "c": f"""
                exec = ["{sys.executable}", "{daemon}", "{tmp_path}/c.pid", "stay"]
            """,
        },
    )
    booted = boot(plan)
    for name in "abc":
        booted.wait_state(name, "ready")
    _read(tmp_path / "c.pid")
    assert booted.cli("shutdown").returncode == 0
    assert booted.proc.wait(10) == 0
    booted.finish()
    assert booted.leftovers == []
    assert "[  OK  ] plan: every module stopped" in booted.output


def test_the_holder_of_a_listening_socket_is_found_both_ways() -> None:
    four = socket.socket()
    four.bind(("127.0.0.1", 0))
    four.listen(1)
    port = four.getsockname()[1]
    six = socket.socket(socket.AF_INET6)
    connected = socket.create_connection(("127.0.0.1", port))
    try:
        six.bind(("::1", port))
        six.listen(1)
        mine = {os.fstat(four.fileno()).st_ino, os.fstat(six.fileno()).st_ino}
        # The connection on the same port is not a listener.
        assert listeners._from_netlink([port]) == {port: mine}
        assert listeners._from_proc(port) == mine
        assert listeners.listener_belongs(port, [os.getpid()]) is True
        assert listeners.listener_belongs(port, [os.getppid()]) is False
    finally:
        for sock in (connected, six, four):
            sock.close()
    assert listeners.listener_belongs(port, [os.getpid()]) is None
