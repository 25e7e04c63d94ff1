"""The module contract, sd_notify, heartbeats, health probes and requirements,
with real module processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PARTENZA,
    Booted,
    free_port,
    partenza_env,
    pids_alive,
    write_plan,
)

SDK_MODULE = """
import sys, time
from partenza.sdk import ContractRefused, Module

args = dict(arg.split("=", 1) for arg in sys.argv[1:])
module = Module(
    capabilities=[c for c in args.get("caps", "").split(",") if c],
    api=args.get("api", "1.0"),
    token=args.get("token"),
)
problems = [p for p in args.get("problems", "").split(",") if p]
module.on_validate(lambda: problems)
try:
    welcome = module.connect()
except ContractRefused as refused:
    print("refused:", refused.reason, flush=True)
    sys.exit(3)
print("welcomed:", welcome["api"], welcome["heartbeat"], flush=True)
module.status("warming up")
module.ready()
beats = float(args.get("beats", "-1"))
if beats != 0:
    module.keep_alive(0.05)
if beats > 0:
    time.sleep(beats)
    module.close()
    print("stopped beating", flush=True)
time.sleep(1000)
"""

HOLDING_SERVER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
held = []
while True:
    conn, _ = server.accept()
    held.append(conn)
"""

HTTP_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(sys.argv[2]))
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

REACH = """
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        print("reached", flush=True)
    except OSError as exc:
        print("unreachable:", exc.strerror, flush=True)
    time.sleep(0.2)
time.sleep(1000)
"""


def scripts(plan: Path) -> dict[str, str]:
    plan.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (
        ("sdk", SDK_MODULE),
        ("hold", HOLDING_SERVER),
        ("http", HTTP_SERVER),
        ("reach", REACH),
    ):
        path = plan / f"module_{name}.py"
        path.write_text(text)
        paths[name] = str(path)
    return paths


def lines(booted: Booted, module: str) -> list[str]:
    return [line["text"] for line in booted.request("logs", module=module)["lines"]]


def wait_line(
    booted: Booted, module: str, text: str, timeout: float = 10.0
) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = lines(booted, module)
        if any(text in line for line in seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{module} never logged {text!r}; it logged: {seen}")


def said(booted: Booted, module: str, start: str, timeout: float = 10.0) -> str:
    """The first line the module wrote that starts with `start`, once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in lines(booted, module) if line.startswith(start)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{module} never wrote {start!r}: {lines(booted, module)}")


def events_until(booted: Booted, stop: Any, timeout: float = 15.0) -> list[dict]:
    """Every event from the start of the boot until `stop(event)` holds."""
    seen = []
    with booted.client(timeout=timeout) as client:
        stream = client.stream("subscribe", since=0)
        next(stream)
        for message in stream:
            event = message.get("event")
            if event is None:
                continue
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"the stream ended; seen {seen}")


def test_the_right_token_is_welcomed_and_the_module_says_ready(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    write_plan(
        plan,
        {
            "good": f"""
                exec = ["{sys.executable}", "{paths["sdk"]}", "caps=cache"]
                provides = ["cache"]
                ready = {{ kind = "handshake", timeout = "10s" }}
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("good", "ready")
    assert record["reason"] == "said ready on the contract socket"
    assert record["contract"] is True
    assert record["status_text"] == "warming up"
    assert "welcomed: 1.0 None" in lines(booted, "good")


@pytest.mark.parametrize(
    ("manifest", "args", "reason"),
    [
        ("", "token=00000000000000000000000000000000", "wrong or stale token"),
        ("", "api=1.1", "the hello says API 1.1, the manifest declares 1.0"),
        (
            'api_version = "1.1"\ncompatibility = "forward"\n',
            "api=1.1",
            "module speaks API 1.1, newer than this orchestrator's 1.0, and is not "
            "backward compatible (forward)",
        ),
        ("", "caps=db", "capability 'db' is not declared in"),
    ],
    ids=["token", "version-mismatch", "not-backward", "capability"],
)
def test_a_bad_hello_is_refused_with_its_reason(
    tmp_path: Path, boot, manifest: str, args: str, reason: str
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    write_plan(
        plan,
        {
            "bad": f"""
                exec = ["{sys.executable}", "{paths["sdk"]}", "{args}"]
                {manifest}
                restart = {{ policy = "never" }}
                ready = {{ kind = "handshake", timeout = "10s" }}
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("bad", "failed")
    assert "exited 3 before it was ready" in record["reason"]
    logged = lines(booted, "bad")
    assert any(line.startswith("refused: ") and reason in line for line in logged)
    assert any(f"refused on the contract socket: {reason}" in line for line in logged)
    assert f"contract: refused bad: {reason}" in booted.output
    events = events_until(booted, lambda e: e["type"] == "contract")
    assert events[-1]["welcomed"] is False and reason in events[-1]["reason"]


def test_ready_sent_at_once_is_not_lost_and_status_is_kept(
    tmp_path: Path, boot
) -> None:
    sender = (
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1\\nSTATUS=serving', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(1000)\n"
    )
    plan = write_plan(
        tmp_path / "plan",
        {
            "quick": f"""
                exec = ["{sys.executable}", "-c", '''{sender}''']
                ready = {{ kind = "notify" }}
            """
        },
    )
    booted = boot(plan)
    record = booted.wait_state("quick", "ready")
    assert record["reason"] == "sent READY=1"
    assert record["status_text"] == "serving"
    # Every module runs as the orchestrator's user: nobody else may look in.
    folder = booted.socket.parent / "notify"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o600}


def test_debians_systemd_notify_works_unchanged(tmp_path: Path, boot) -> None:
    if not os.path.exists("/usr/bin/systemd-notify") and not os.path.exists(
        "/bin/systemd-notify"
    ):
        pytest.skip("systemd-notify is not installed")
    plan = tmp_path / "plan"
    plan.mkdir()
    script = plan / "unit.sh"
    script.write_text(
        "set -e\n"
        "systemd-notify --ready --status='from systemd-notify'\n"
        "echo notified-ok\n"
        "exec sleep 1000\n"
    )
    write_plan(
        plan,
        {
            "unit": f"""
                exec = ["sh", "{script}"]
                ready = {{ kind = "notify", timeout = "10s" }}
            """
        },
    )
    booted = boot(plan)
    record = booted.wait_state("unit", "ready")
    assert record["status_text"] == "from systemd-notify"
    # systemd-notify waits for its barrier to be answered; exit 0 proves it was.
    wait_line(booted, "unit", "notified-ok", timeout=4)


def test_a_module_that_stops_heartbeating_is_hung_and_restarted(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    write_plan(
        plan,
        {
            "beater": f"""
                exec = ["{sys.executable}", "{paths["sdk"]}", "beats=0.6"]
                ready = {{ kind = "handshake" }}
                heartbeat = {{ interval = "300ms" }}
                restart = {{ delay = "50ms", limit = 5 }}
            """,
        },
    )
    booted = boot(plan)
    events = events_until(
        booted, lambda e: e["type"] == "state" and e["new"] == "restarting"
    )
    states = [e["new"] for e in events if e["type"] == "state"]
    assert states[-3:] == ["hung", "stopping", "restarting"] or states[-2:] == [
        "hung",
        "restarting",
    ]
    hung = next(e for e in events if e["type"] == "state" and e["new"] == "hung")
    assert hung["reason"] == "no heartbeat for 300ms; stopping it"
    assert events[-1]["reason"].startswith("hung: no heartbeat for 300ms; restart 1")
    deadline = time.monotonic() + 5
    while "[ WARN ] beater: hung, no heartbeat for 300ms" not in booted.output:
        assert time.monotonic() < deadline, booted.output
        time.sleep(0.05)
    assert "welcomed: 1.0 0.3" in lines(booted, "beater")


def test_watchdog_pings_over_notify_keep_a_module_alive_until_they_stop(
    tmp_path: Path, boot
) -> None:
    pinger = (
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "path = os.environ['NOTIFY_SOCKET']\n"
        "print('usec', os.environ['WATCHDOG_USEC'], flush=True)\n"
        "s.sendto(b'READY=1', path)\n"
        "for _ in range(10):\n"
        "    time.sleep(0.1)\n"
        "    s.sendto(b'WATCHDOG=1', path)\n"
        "time.sleep(1000)\n"
    )
    plan = write_plan(
        tmp_path / "plan",
        {
            "dog": f"""
                exec = ["{sys.executable}", "-c", '''{pinger}''']
                ready = {{ kind = "notify" }}
                heartbeat = {{ interval = "400ms", via = "watchdog" }}
                restart = {{ policy = "never" }}
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("dog", "ready")
    time.sleep(0.9)
    assert booted.module("dog")["state"] == "ready", "pinged in time, it must live"
    record = booted.wait_state("dog", "failed", timeout=10)
    assert record["reason"] == "hung: no heartbeat for 400ms"
    assert "usec 400000" in lines(booted, "dog")


def _sample_processes(needle: bytes, seconds: float) -> int:
    """The most processes whose command line contains `needle`, seen at once."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        count += 1
            except OSError:
                continue
        most = max(most, count)
        time.sleep(0.02)
    return most


def test_a_hanging_exec_probe_is_killed_and_never_piles_up(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "slowprobe": """
                exec = "sleep 1000"
                [health]
                kind = "exec"
                command = ["sleep", "101.5"]
                interval = "20ms"
                timeout = "150ms"
                threshold = 2
                restart_after = 0
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("slowprobe", "degraded")
    assert record["reason"] == (
        "2 failed health probes (exec sleep 101.5: no answer within 150ms)"
    )
    assert record["health"] == "failing"
    assert _sample_processes(b"sleep\x00101.5", 1.5) == 1


def _client_connections_to(port: int) -> int:
    """ESTABLISHED TCP sockets on this machine whose remote end is `port`."""
    count = 0
    with open("/proc/net/tcp") as handle:
        next(handle)
        for row in handle:
            fields = row.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def test_a_hanging_http_probe_times_out_and_connections_do_not_pile_up(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    port = free_port()
    write_plan(
        plan,
        {
            "mute": f"""
                exec = ["{sys.executable}", "{paths["hold"]}", "{port}"]
                ready = {{ kind = "tcp", port = {port} }}
                [health]
                kind = "http"
                url = "http://127.0.0.1:{port}/health"
                interval = "20ms"
                timeout = "150ms"
                threshold = 2
                restart_after = 0
            """,
        },
    )
    booted = boot(plan)
    record = booted.wait_state("mute", "degraded")
    assert "http http://127.0.0.1:" in record["reason"]
    assert record["reason"].endswith("no answer within 150ms)")
    most = 0
    for _ in range(40):
        most = max(most, _client_connections_to(port))
        time.sleep(0.025)
    assert most <= 1


def test_failing_probes_degrade_then_restart_and_a_pass_recovers(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    port = free_port()
    write_plan(
        plan,
        {
            "sick": f"""
                exec = ["{sys.executable}", "{paths["http"]}", "{port}", "500"]
                ready = {{ kind = "tcp", port = {port} }}
                restart = {{ delay = "50ms" }}
                [health]
                kind = "http"
                url = "http://127.0.0.1:{port}/"
                status = "200-299"
                interval = "30ms"
                threshold = 2
                restart_after = 2
            """,
        },
    )
    booted = boot(plan)
    events = events_until(
        booted, lambda e: e["type"] == "state" and e["new"] == "restarting"
    )
    degraded = next(e for e in events if e.get("new") == "degraded")
    assert degraded["reason"].endswith(": HTTP 500)")
    assert events[-1]["reason"].startswith("unhealthy: HTTP 500; restart 1")
    health = [e for e in events if e["type"] == "health"]
    assert health[0]["health"] == "failing"


def test_a_dependency_that_must_be_healthy_is_waited_for(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    port = free_port()
    write_plan(
        plan,
        {
            "db": f"""
                exec = [
                    "sh", "-c",
                    "sleep 0.8; exec {sys.executable} {paths["hold"]} {port}",
                ]
                [health]
                kind = "tcp"
                port = {port}
                interval = "50ms"
                threshold = 100
            """,
            "api": 'exec = "sleep 1000"\nrequires_healthy = ["db"]\n',
        },
    )
    booted = boot(plan)
    snapshot = booted.wait_for(
        lambda s: any(m["name"] == "db" and m["state"] == "ready" for m in s["modules"])
    )
    api = next(m for m in snapshot["modules"] if m["name"] == "api")
    assert (
        api["state"] == "inactive" and api["reason"] == "waiting for db to be healthy"
    )
    events = events_until(
        booted,
        lambda e: e["type"] == "state" and e["module"] == "api" and e["new"] == "ready",
    )
    passing = next(
        e for e in events if e["type"] == "health" and e["health"] == "passing"
    )
    api_started = next(
        e for e in events if e.get("module") == "api" and e.get("new") == "initializing"
    )
    assert passing["seq"] < api_started["seq"]


def test_validate_runs_checks_and_shows_their_output(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "nginx": """
                exec = "sleep 1000"
                check = [
                    "sh", "-c",
                    "echo 'unknown directive \\"lsten\\" in web.conf:3' >&2; exit 1",
                ]
            """,
            "fine": 'exec = "sleep 1000"\ncheck = "true"\n',
            "slow": """
                exec = "sleep 1000"
                check = "sleep 30"
                check_timeout = "300ms"
            """,
        },
    )
    result = subprocess.run(
        [PARTENZA, "validate", str(plan)],
        env=partenza_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "fine: check `true` passed" in result.stdout
    assert f"{plan}/nginx.toml: check: nginx: `sh -c" in result.stderr
    assert 'exited 1\n    | unknown directive "lsten" in web.conf:3\n' in result.stderr
    assert (
        f"{plan}/slow.toml: check: slow: `sleep 30` killed after 300ms" in result.stderr
    )
    assert "partenza: " in result.stderr and "2 problems" in result.stderr


def test_the_live_validate_asks_contract_modules_and_runs_checks(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    write_plan(
        plan,
        {
            "talker": f"""
                exec = [
                    "{sys.executable}", "{paths["sdk"]}", "problems=port 0 is no port"
                ]
                ready = {{ kind = "handshake" }}
            """,
            "checked": 'exec = "sleep 1000"\ncheck = ["sh", "-c", "echo all good"]\n',
        },
    )
    booted = boot(plan)
    booted.wait_state("talker", "ready")
    result = booted.request("validate")
    assert result["valid"] is False
    assert result["checks"]["talker"] == {
        "ok": False,
        "how": "the module found problems",
        "output": ["port 0 is no port"],
    }
    assert result["checks"]["checked"] == {
        "ok": True,
        "how": "exited 0",
        "output": ["all good"],
    }
    assert result["problems"] == ["talker: the module found problems"]


def test_a_module_without_network_cannot_reach_the_host_while_its_neighbour_can(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    reach = f'exec = ["{sys.executable}", "{paths["reach"]}", "{port}"]\n'
    try:
        write_plan(
            plan,
            {
                "isolated": f'{reach}\nnetwork = "none"\n',
                "local": f'{reach}\nnetwork = "loopback"\n',
                "neighbour": reach,
            },
        )
        booted = boot(plan)
        wait_line(booted, "neighbour", "reached")
        isolated = wait_line(booted, "isolated", "unreachable")
        local = wait_line(booted, "local", "unreachable")
        assert not any(line == "reached" for line in isolated + local)
        assert booted.module("isolated")["network"] == "none"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, which can grant it")
def test_a_module_that_needs_root_is_blocked_and_refused(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan", {"admin": 'exec = "sleep 1000"\nroot = true\n'}
    )
    booted = boot(plan)
    record = booted.wait_state("admin", "blocked")
    assert record["reason"].startswith("needs root; the orchestrator runs as uid")


def test_a_missing_user_blocks_at_boot_and_fails_validate(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "ghost": 'exec = "sleep 1000"\nuser = "no-such-user-pz"\n',
            "after_ghost": 'exec = "sleep 1000"\nrequires = ["ghost"]\n',
        },
    )
    booted = boot(plan)
    record = booted.wait_state("ghost", "blocked")
    assert record["reason"] == "runs as user 'no-such-user-pz', which does not exist"
    assert booted.wait_state("after_ghost", "blocked")["reason"] == (
        "requires ghost, which is blocked"
    )
    result = booted.cli("validate", str(plan))
    assert result.returncode == 1
    assert (
        f"{plan}/ghost.toml: requirements: ghost runs as user 'no-such-user-pz', "
        "which does not exist" in result.stderr
    )


def _raw(path: str, payload: bytes, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(payload)
        except BrokenPipeError:
            return b""
        if not read:
            return b""
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return data


FLOODER = """
import os, socket, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sender.setblocking(False)
sent = 0
deadline = time.monotonic() + 2.5
while time.monotonic() < deadline:
    try:
        sender.sendto(b"STATUS=flood\\nGARBAGE" * 8, os.environ["NOTIFY_SOCKET"])
        sent += 1
    except BlockingIOError:
        time.sleep(0.001)
print("sent", sent, flush=True)
time.sleep(1000)
"""


def test_bad_contract_input_is_dropped_and_every_other_module_is_served(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    paths = scripts(plan)
    pinger = (
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "path = os.environ['NOTIFY_SOCKET']\n"
        "s.sendto(b'READY=1', path)\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
        "    s.sendto(b'WATCHDOG=1', path)\n"
    )
    go = tmp_path / "go"
    write_plan(
        plan,
        {
            "flooded": f"""
                exec = ["{sys.executable}", "-c", '''{FLOODER}''', "{go}"]
                ready = {{ kind = "notify", timeout = "60s" }}
            """,
            "steady": f"""
                exec = ["{sys.executable}", "-c", '''{pinger}''']
                ready = {{ kind = "notify" }}
                heartbeat = {{ interval = "1s", via = "watchdog" }}
                restart = {{ policy = "never" }}
            """,
            "talker": f"""
                exec = ["{sys.executable}", "{paths["sdk"]}"]
                ready = {{ kind = "handshake" }}
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("steady", "ready")
    booted.wait_state("talker", "ready")
    contract = str(booted.socket.parent / "contract.sock")

    # Garbage, a message that is not a hello, and an oversized hello.
    assert json.loads(_raw(contract, b"not json at all\n"))["type"] == "refused"
    assert json.loads(_raw(contract, b'{"type": "ready"}\n'))["reason"] == (
        "the first message was not a hello"
    )
    _raw(contract, b'{"type": "hello", "x": "' + b"y" * 100_000 + b'"}\n', read=False)

    # A notify flood on one module's socket, from the module.
    go.touch()
    assert int(said(booted, "flooded", "sent ").split()[1]) > 1000

    # A client that says nothing is let go; meanwhile everyone else is served.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(contract)
    started = time.monotonic()
    silent.settimeout(10)
    assert silent.recv(100) == b""
    assert time.monotonic() - started >= 4.5
    silent.close()
    assert booted.module("steady")["state"] == "ready", "its watchdog was served"
    assert booted.module("talker")["state"] == "ready"
    assert booted.module("flooded")["status_text"] == "flood"
    assert "contract: refused a client: a client said nothing for 5s" in booted.output
    assert "contract: refused a client: a hello longer than 64 KiB" in booted.output


FORKER = """
import os, socket, sys, time
path = os.environ["NOTIFY_SOCKET"]
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
child = os.fork()
if child == 0:
    time.sleep(0.2)
    out.sendto(b"RELOADING=1", path)
    time.sleep(0.3)
    out.sendto(b"READY=1\\nSTATUS=reloaded", path)
    time.sleep(0.3)
    out.sendto(b"STOPPING=1", path)
    time.sleep(1000)
out.sendto(f"MAINPID={child}\\nREADY=1".encode(), path)
print("forked", child, flush=True)
"""


def test_a_forking_daemon_hands_over_with_mainpid(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "forker.py").write_text(FORKER)
    write_plan(
        plan,
        {
            "daemon": """
                exec = ["${python}", "forker.py"]
                ready = { kind = "notify" }
                restart = { policy = "never" }
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("daemon", "ready")
    line = wait_line(booted, "daemon", "forked")
    child = int(next(text for text in line if text.startswith("forked")).split()[1])
    record = booted.module("daemon")
    assert record["main_pid"] == child
    events = events_until(
        booted,
        lambda e: e["type"] == "state" and e.get("reason") == "reloaded",
    )
    reasons = [e["reason"] for e in events if e.get("module") == "daemon"]
    assert "reloading" in reasons
    wait_line(booted, "daemon", "says it is stopping (STOPPING=1)")
    # The launcher exited long ago; the module lives on in its main pid.
    assert booted.module("daemon")["state"] == "ready"
    os.kill(child, signal.SIGKILL)
    record = booted.wait_state("daemon", "failed")
    assert record["reason"] == "killed by SIGKILL"


def _events(booted: Booted) -> list[dict]:
    """Every event kept so far: the stream's backlog, until it falls quiet."""
    seen = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(booted.socket))
        sock.sendall(b'{"v": 1, "id": 1, "op": "subscribe", "since": 0}\n')
        sock.settimeout(0.5)
        reader = sock.makefile("rb")
        try:
            while line := reader.readline():
                event = json.loads(line).get("event")
                if event is not None:
                    seen.append(event)
        except TimeoutError:
            pass
    return seen


def wait_output(booted: Booted, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in booted.output:
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{booted.output}"
        time.sleep(0.05)
    return booted.output


LIAR = """
import os, socket, time
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["NOTIFY_SOCKET"]
own = str(os.getpid())
for value in (str(os.getppid()), "-1", "0", " " + own, chr(0xFF10 + 7), own + "x"):
    out.sendto(f"MAINPID={value}".encode(), path)
out.sendto(b"READY=1", path)
time.sleep(1000)
"""


def test_mainpid_is_taken_only_for_the_modules_own_processes(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "liar": f"""
                exec = ["{sys.executable}", "-c", '''{LIAR}''']
                ready = {{ kind = "notify" }}
                restart = {{ policy = "never" }}
            """
        },
    )
    booted = boot(plan)
    record = booted.wait_state("liar", "ready")
    orchestrator = booted.proc.pid
    wait_output(booted, f"liar: MAINPID={orchestrator} refused: not one of its")
    output = wait_output(booted, f"liar: MAINPID={record['pid']}x refused: not a pid")
    for said, why in (
        ("-1", "not a pid"),
        ("0", "not one of its processes"),
        (f" {record['pid']}", "not a pid"),
        ("\uff17", "not a pid"),
    ):
        assert f"liar: MAINPID={said} refused: {why}" in output
    refusals = [e for e in _events(booted) if e["type"] == "notify"]
    assert len(refusals) == 6 and refusals[0]["module"] == "liar"
    assert booted.module("liar")["main_pid"] is None
    # With no main pid of its own naming, its end is seen, and a stop is quick.
    os.kill(record["pid"], signal.SIGKILL)
    assert booted.wait_state("liar", "failed", timeout=10)["reason"] == (
        "killed by SIGKILL"
    )


STUBBORN = """
import os, signal, socket, sys, time
child = os.fork()
if child == 0:
    os.setsid()
    env = {k: v for k, v in os.environ.items() if k != "PARTENZA_TOKEN"}
    code = (
        "import os, signal, socket, time\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\\n"
        "out.sendto(f'MAINPID={os.getpid()}\\\\nREADY=1'.encode(),"
        " os.environ['NOTIFY_SOCKET'])\\n"
        "time.sleep(1000)\\n"
    )
    os.execve(sys.executable, [sys.executable, "-c", code], env)
time.sleep(1)
print("handed over to", child, flush=True)
"""


def test_a_stop_kills_a_main_pid_that_ignores_it_and_moves_on(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "stubborn": f"""
                exec = ["{sys.executable}", "-c", '''{STUBBORN}''']
                ready = {{ kind = "notify" }}
                stop = {{ timeout = "500ms" }}
                restart = {{ policy = "never" }}
            """
        },
    )
    booted = boot(plan)
    booted.wait_state("stubborn", "ready")
    seen = wait_line(booted, "stubborn", "main pid is")
    main = int(next(t for t in seen if t.startswith("handed over to")).split()[-1])
    assert booted.module("stubborn")["main_pid"] == main
    started = time.monotonic()
    answer = booted.request("stop", module="stubborn", timeout=8)
    assert answer["settled"], answer
    assert time.monotonic() - started < 5
    record = answer["module"]
    assert record["state"] == "stopped"
    assert "killed with SIGKILL after 500ms" in record["reason"]
    assert not pids_alive([main])


TRIGGER = """
import os, socket, sys, time
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["NOTIFY_SOCKET"]
out.sendto(b"READY=1", path)
first = not os.path.exists(sys.argv[1])
open(sys.argv[1], "a").close()
for beat in range(1000):
    time.sleep(0.1)
    out.sendto(b"WATCHDOG=1", path)
    if first and beat == 2:
        out.sendto(b"WATCHDOG=trigger", path)
"""


def test_one_watchdog_trigger_restarts_a_module_once(tmp_path: Path, boot) -> None:
    marker = tmp_path / "started-once"
    plan = write_plan(
        tmp_path / "plan",
        {
            "dog": f"""
                exec = ["{sys.executable}", "-c", '''{TRIGGER}''', "{marker}"]
                ready = {{ kind = "notify" }}
                heartbeat = {{ interval = "600ms", via = "watchdog" }}
                restart = {{ delay = "50ms", limit = 5 }}
            """
        },
    )
    booted = boot(plan)
    booted.wait_for(
        lambda s: (
            s["modules"][0]["restarts"] == 1 and s["modules"][0]["state"] == "ready"
        ),
        what="one restart",
    )
    # A timer left from the first start must not find the second one hung.
    time.sleep(1.5)
    record = booted.module("dog")
    assert (record["state"], record["restarts"]) == ("ready", 1), record
    assert "it reported itself hung (WATCHDOG=trigger)" in booted.output


NOTIFY_AS_NOBODY = "systemd-notify --ready --status=own; echo said-it; exec sleep 1000"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as other users")
@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-notify"), reason="needs systemd-notify"
)
def test_notify_datagrams_are_taken_only_from_the_module_or_root(
    tmp_path: Path, boot
) -> None:
    # Its runtime folder must be reachable by the module's user.
    runtime = Path(tempfile.mkdtemp(prefix="pz-nobody-", dir="/tmp"))
    runtime.chmod(0o711)
    try:
        plan = write_plan(
            tmp_path / "plan",
            {
                "low": f"""
                    exec = ["sh", "-c", "{NOTIFY_AS_NOBODY}"]
                    user = "nobody"
                    workdir = "/"
                    ready = {{ kind = "notify", timeout = "10s" }}
                """
            },
        )
        booted = boot(plan, env={"PARTENZA_RUNTIME_DIR": str(runtime / "run")})
        record = booted.wait_state("low", "ready")
        said(booted, "low", "said-it")
        assert record["status_text"] == "own"
        with open(f"/proc/{record['pid']}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
        assignment = next(i for i in environ if i.startswith(b"NOTIFY_SOCKET="))
        path = Path(assignment.split(b"=", 1)[1].decode())
        assert path.stat().st_uid == 65534
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o711

        def send_as(uid: int, payload: bytes) -> str:
            code = (
                "import os, socket, sys\n"
                f"os.setgid({uid}); os.setuid({uid})\n"
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                "try:\n"
                "    s.sendto(sys.argv[2].encode(), sys.argv[1])\n"
                "    print('sent')\n"
                "except OSError as exc:\n"
                "    print(exc.strerror)\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", code, str(path), payload.decode()],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return result.stdout.strip() or result.stderr

        # The module's user, but not the module: dropped, with a log line.
        assert send_as(65534, b"STATUS=forged") == "sent"
        wait_output(booted, "low: dropped a notify datagram from pid ")
        assert "(uid 65534): not one of its processes" in booted.output
        # Another user cannot reach the socket at all; root may speak.
        assert send_as(65533, b"STATUS=other") == "Permission denied"
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(
            b"STATUS=from root", str(path)
        )
        booted.wait_for(
            lambda s: s["modules"][0]["status_text"] == "from root", what="root"
        )
        booted.shutdown()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_hostile_contract_input_is_refused_plainly(tmp_path: Path, boot) -> None:
    plan = write_plan(tmp_path / "plan", {"quiet": 'exec = "sleep 1000"\n'})
    booted = boot(plan)
    record = booted.wait_state("quiet", "ready")
    contract = str(booted.socket.parent / "contract.sock")

    # Nested too deeply to parse: refused like anything that is not a hello.
    answer = json.loads(_raw(contract, b"[" * 60000 + b"\n"))
    assert answer["reason"] == "the first message was not a hello (nested too deeply)"

    # A module name that would forge console lines is shown escaped and short.
    forged = "hs\n[  OK  ] web: ready in 0.01s (pid 1)\n\x1b[2J" + "x" * 100
    hello = {"type": "hello", "module": forged, "token": "x", "api": "1.0"}
    _raw(contract, json.dumps(hello).encode() + b"\n")
    output = wait_output(booted, "contract: refused hs\\x0a[  OK  ] web: ready in")
    assert not any(line.startswith("[  OK  ] web") for line in output.splitlines())
    assert "\x1b[2J" not in output
    refused = [e for e in _events(booted) if e["type"] == "contract"]
    assert refused[-1]["module"].startswith("hs\\x0a[  OK  ]")
    assert len(refused[-1]["module"]) == 64 and refused[-1]["module"].endswith("...")

    # After the welcome: a bad id is a malformed message, and the connection
    # lives on until twenty of them.
    with open(f"/proc/{record['pid']}/environ", "rb") as handle:
        token = next(
            item.split(b"=", 1)[1].decode()
            for item in handle.read().split(b"\0")
            if item.startswith(b"PARTENZA_TOKEN=")
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(contract)
        hello = {"type": "hello", "module": "quiet", "token": token, "api": "1.0"}
        sock.sendall(json.dumps(hello).encode() + b"\n")
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["type"] == "welcome"
        sock.sendall(b'{"type": "validated", "id": [1], "ok": true}\n')
        sock.sendall(b"[" * 60000 + b"\n")
        sock.sendall(b'{"type": "status", "text": "still here"}\n')
        booted.wait_for(
            lambda s: s["modules"][0]["status_text"] == "still here",
            what="the status after a bad id",
        )
        sock.sendall(b"bad\n" * 18)
        assert reader.read() == b""
    output = wait_output(booted, "quiet: contract: hung up: 20 malformed messages")
    assert "(id [1] is neither a number nor a name)" in output
    assert "Traceback" not in output and "Unhandled" not in output
    hung_up = [e for e in _events(booted) if e.get("hung_up")]
    assert hung_up[-1]["module"] == "quiet"


BABBLER = """
import os, socket, time
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["NOTIFY_SOCKET"]
out.sendto(b"READY=1", path)
out.sendto(b"STATUS=" + b"Z" * 5000, path)
out.sendto(b"ERRNO=" + b"9" * 3000, path)
out.sendto(b"ERRNO=13", path)
for i in range(20000):
    out.sendto(f"STATUS=flood {i}".encode(), path)
out.sendto(b"STATUS=last", path)
print("flooded", flush=True)
time.sleep(1000)
"""


def test_notify_floods_and_oversized_datagrams_cost_little(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "babbler": f"""
                exec = ["{sys.executable}", "-c", '''{BABBLER}''']
                ready = {{ kind = "notify" }}
            """
        },
    )
    booted = boot(plan)
    said(booted, "babbler", "flooded", timeout=20)
    booted.wait_for(
        lambda s: s["modules"][0]["status_text"] == "last", what="the last status"
    )
    statuses = [e["text"] for e in _events(booted) if e["type"] == "status"]
    assert statuses[-1] == "last"
    assert len(statuses) < 200, len(statuses)
    assert not any(text.startswith("ZZZ") for text in statuses)
    output = booted.output
    assert "babbler: dropped a notify datagram over 4096 bytes" in output
    assert "babbler: ERRNO=999999999" in output and "refused: not a number" in output
    assert "says ERRNO=13" in lines(booted, "babbler")
