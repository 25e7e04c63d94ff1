"""The control socket and the CLI that talks to it, against a real orchestrator."""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from partenza.client import Client
from tests.conftest import (
    MARK,
    PARTENZA,
    kill_marked,
    partenza_env,
    pids_alive,
    write_plan,
)

SIMPLE = {
    "web": 'exec = "sleep 1000"\ndescription = "the web"\n',
    "worker": 'exec = "sleep 1000"\nrequires = ["web"]\n',
}


def raw_exchange(path: Path, payload: bytes) -> list[dict]:
    """Send raw bytes on the socket; return every reply line until a pause."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # The server stopped reading: its reply is still there to read.
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_the_socket_is_private(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    assert stat.S_IMODE(booted.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(booted.socket.parent.stat().st_mode) == 0o711


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_a_peer_of_another_uid_is_refused(tmp_path: Path, boot) -> None:
    # The socket must be reachable by path for the other uid to get as far as
    # the orchestrator's own check.
    runtime = Path(tempfile.mkdtemp(prefix="partenza-peer-", dir="/tmp"))
    runtime.chmod(0o755)
    try:
        booted = boot(
            write_plan(tmp_path / "plan", SIMPLE),
            env={"PARTENZA_RUNTIME_DIR": str(runtime)},
        )
        booted.socket.chmod(0o666)
        _probe_as_nobody(booted)
        booted.shutdown()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _probe_as_nobody(booted) -> None:
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "try:\n"
        '    s.sendall(b\'{"v": 1, "id": 1, "op": "status"}\\n\')\n'
        "    print(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(repr(b''))\n"
    )
    result = subprocess.run(
        [os.sys.executable, "-c", probe, str(booted.socket)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.stdout.strip() == "b''", result.stderr
    deadline = time.monotonic() + 5
    while "control socket: refused pid" not in booted.output:
        assert time.monotonic() < deadline, booted.output
        time.sleep(0.05)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    tmp_path: Path, boot
) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    replies = raw_exchange(
        booted.socket,
        b"this is not json\n"
        b"[1, 2]\n"
        b'{"id": 1, "op": "status"}\n'
        b'{"v": 1, "id": 2, "op": "stauts"}\n'
        b'{"v": 1, "id": 3, "op": "status", "module": "webb"}\n'
        b'{"v": 1, "id": 4, "op": "logs", "module": "web", "lines": -1}\n'
        b'{"v": 1, "id": 5, "op": "hello"}\n',
    )
    errors = [reply.get("error", {}) for reply in replies]
    assert errors[0]["message"].startswith("not JSON: ")
    assert errors[1]["message"] == "a request must be a JSON object"
    assert errors[2] == {
        "message": "protocol version None is not spoken here",
        "hint": 'send "v": 1',
    }
    assert errors[3] == {
        "message": "unknown op 'stauts'",
        "hint": "did you mean 'status'?",
    }
    assert errors[4] == {
        "message": "unknown module 'webb'",
        "hint": "did you mean 'web'?",
    }
    assert errors[5]["message"] == "lines must be a count of 0 or more, got -1"
    assert replies[6]["ok"] is True and replies[6]["result"]["protocol"] == 1
    assert [reply["id"] for reply in replies[2:]] == [1, 2, 3, 4, 5]


def test_an_oversized_request_is_refused(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    replies = raw_exchange(
        booted.socket, b'{"v": 1, "op": "' + b"x" * (2 << 20) + b'"}\n'
    )
    assert replies[0]["error"]["message"] == "request too long"
    assert booted.request("hello")["protocol"] == 1


def test_status_lists_every_module_as_a_table_and_as_json(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    booted.wait_state("worker", "ready")
    table = booted.cli("status")
    assert table.returncode == 0
    header, columns, *rows = table.stdout.splitlines()
    assert header.startswith("plan: running, up ")
    assert columns.split() == ["MODULE", "STATE", "PID", "UPTIME", "RESTARTS", "REASON"]
    assert [row.split()[:2] for row in rows] == [["web", "ready"], ["worker", "ready"]]
    data = json.loads(booted.cli("status", "--json").stdout)
    assert [m["name"] for m in data["modules"]] == ["web", "worker"]
    assert data["system"]["state"] == "running"
    detail = booted.cli("status", "worker").stdout
    assert "requires: web" in detail and "state: ready" in detail


def test_control_commands_wait_and_report_through_exit_codes(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            **SIMPLE,
            "broken": (
                'exec = ["sh", "-c", "echo oops; exit 4"]\n'
                'restart = { policy = "never" }\n'
                'ready = { kind = "log", pattern = "never printed" }\n'
            ),
        },
    )
    booted = boot(plan)
    booted.wait_state("worker", "ready")
    stopped = booted.cli("stop", "web")
    assert stopped.returncode == 0
    assert stopped.stdout.startswith("web: stopped (stop requested; ")
    assert booted.module("worker")["state"] == "stopped"
    # Started again, web does not bring worker along, and `why` says so.
    assert booted.cli("start", "web").returncode == 0
    why = booted.cli("why", "worker")
    assert why.stdout.startswith("worker stopped: requires web, which was asked to")
    assert why.stdout.endswith("it stays down until started: partenza start worker\n")
    assert "stays down" not in booted.cli("why", "web").stdout
    started = booted.cli("start", "worker")
    assert started.returncode == 0 and started.stdout.startswith("worker: ready")
    assert booted.module("web")["state"] == "ready"
    before = booted.module("web")["pid"]
    restarted = booted.cli("restart", "web")
    assert restarted.returncode == 0
    assert booted.module("web")["pid"] != before
    assert booted.module("web")["restarts"] == 1
    failed = booted.cli("start", "broken")
    assert failed.returncode == 1
    assert failed.stderr == "partenza: broken is failed (see `partenza logs broken`)\n"
    unknown = booted.cli("restart", "wbe")
    assert unknown.returncode == 1
    assert unknown.stderr == "partenza: unknown module 'wbe' (did you mean 'web'?)\n"


def test_logs_tail_and_follow(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "counter": (
                'exec = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; '
                'sleep 0.05; done"]\n'
            )
        },
    )
    booted = boot(plan)
    booted.wait_state("counter", "ready")
    time.sleep(0.4)
    tail = booted.cli("logs", "counter", "-n", "3").stdout.splitlines()
    assert len(tail) == 3 and all(
        line.split("| ")[1].startswith("line ") for line in tail
    )
    follow = subprocess.Popen(
        [PARTENZA, "logs", "counter", "-f", "-n", "0"],
        env=booted.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        first = int(follow.stdout.readline().split("line ")[1])
        second = int(follow.stdout.readline().split("line ")[1])
        assert second == first + 1
    finally:
        follow.kill()
        follow.wait()


def test_events_stream_follows_state_changes(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    booted.wait_state("worker", "ready")
    events = subprocess.Popen(
        [PARTENZA, "events", "--json"],
        env=booted.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert events.stdout is not None
        first = json.loads(events.stdout.readline())
        assert [m["name"] for m in first["snapshot"]["modules"]] == ["web", "worker"]
        assert booted.cli("restart", "worker").returncode == 0
        seen = []
        while not seen or seen[-1] != ("worker", "ready"):
            event = json.loads(events.stdout.readline())
            if event["type"] == "state":
                seen.append((event["module"], event["new"]))
        assert seen == [
            ("worker", "stopping"),
            ("worker", "stopped"),
            ("worker", "initializing"),
            ("worker", "ready"),
        ]
        # When the orchestrator goes, the stream says so and ends.
        assert booted.cli("shutdown").returncode == 0
        rest, errors = events.communicate(timeout=20)
        assert json.loads(rest.splitlines()[-1])["type"] in ("system", "state")
        assert events.returncode == 3
        assert errors == (
            "partenza: events: the orchestrator closed the connection (it shut "
            "down or was stopped; nothing more to follow)\n"
        )
    finally:
        events.kill()
        events.wait()


def test_subscribe_resumes_from_a_sequence_number_within_one_boot(
    tmp_path: Path, boot
) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    booted.wait_state("worker", "ready")
    with booted.client() as client:
        stream = client.stream("subscribe", since=0)
        first = next(stream)
        assert first["resumed"] is True
        replayed = next(stream)["event"]
        assert replayed["seq"] == 1 and replayed["type"] == "system"
    with booted.client() as client:
        fresh = next(client.stream("subscribe", since=0, boot="another-boot"))
        assert fresh["resumed"] is False and len(fresh["modules"]) == 2


def test_without_an_orchestrator_clients_exit_3_with_a_hint(tmp_path: Path) -> None:
    result = subprocess.run(
        [PARTENZA, "status"],
        env=partenza_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 3
    assert result.stderr.startswith(
        f"partenza: no orchestrator answers on {tmp_path}/run/"
    )
    assert "is `partenza boot` running?" in result.stderr


def test_a_boot_refuses_unusable_state_and_socket_folders(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", SIMPLE)
    blocker = tmp_path / "a-file"
    blocker.write_text("where a folder should be")

    def boot_with(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PARTENZA, "boot", str(plan)],
            env={**partenza_env(tmp_path / "o"), **env},
            capture_output=True,
            text=True,
            timeout=20,
        )

    state = boot_with(PARTENZA_STATE_DIR=str(blocker / "state"))
    assert state.returncode == 1
    assert state.stdout.rstrip().endswith(
        f"partenza: cannot use the state folder {blocker}/state: Not a directory "
        "(set PARTENZA_STATE_DIR or --state-dir to a folder you may write)"
    )
    missing = tmp_path / "no" / "such"
    socket = boot_with(PARTENZA_RUNTIME_DIR=str(missing / "run"))
    assert socket.returncode == 1
    assert (
        f"partenza: cannot create the socket's folder {missing}/run: {missing} "
        "does not exist (choose another with --socket or PARTENZA_RUNTIME_DIR)"
    ) in socket.stdout
    assert not missing.exists(), "no folder tree was made for a mistyped path"


def test_a_second_orchestrator_on_the_same_socket_is_refused(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(tmp_path / "plan", SIMPLE)
    booted = boot(plan)
    state = booted.env["PARTENZA_STATE_DIR"]
    same_state = subprocess.run(
        [PARTENZA, "boot", str(plan)],
        env=booted.env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert same_state.returncode == 1
    assert f"another orchestrator uses the state folder {state}" in same_state.stdout
    other_state = subprocess.run(
        [PARTENZA, "boot", str(plan)],
        env={**booted.env, "PARTENZA_STATE_DIR": str(tmp_path / "other")},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert other_state.returncode == 1
    assert f"another orchestrator is running on {booted.socket}" in other_state.stdout
    assert booted.request("hello")["pid"] == booted.proc.pid


def test_an_invalid_plan_does_not_boot(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan", {"web": 'exec = "sleep 1000"\nrequires = ["db"]\n'}
    )
    result = subprocess.run(
        [PARTENZA, "boot", str(plan)],
        env=partenza_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1
    assert "web requires 'db', which no module in the plan provides" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_reload_applies_a_mended_plan_and_refuses_a_broken_one(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(tmp_path / "plan", SIMPLE)
    booted = boot(plan)
    booted.wait_state("worker", "ready")
    worker_pid = booted.module("worker")["pid"]
    (plan / "web.toml").write_text('exec = "sleep 2000"\nrequires = ["nothing"]\n')
    refused = booted.cli("reload")
    assert refused.returncode == 1
    assert (
        "web requires 'nothing', which no module in the plan provides" in refused.stderr
    )
    assert "nothing was changed" in refused.stderr
    preview = booted.request("validate")
    assert preview["valid"] is False and len(preview["problems"]) == 1
    (plan / "web.toml").write_text('exec = "sleep 2000"\n')
    preview = booted.request("validate")
    assert preview["changes"] == {"added": [], "removed": [], "changed": ["web"]}
    applied = booted.cli("reload")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "reloaded: changed web"
    record = booted.wait_for(
        lambda s: (
            any(
                m["name"] == "web" and m["state"] == "ready" and m["restarts"] == 0
                for m in s["modules"]
            )
            and all(m["state"] == "ready" for m in s["modules"])
        ),
        what="web back on its new manifest",
    )
    web = next(m for m in record["modules"] if m["name"] == "web")
    with open(f"/proc/{web['pid']}/cmdline", "rb") as handle:
        assert handle.read().split(b"\0")[:2] == [b"sleep", b"2000"]
    assert booted.module("worker")["pid"] == worker_pid, "the worker was left alone"


def test_a_log_follower_that_falls_behind_is_told_what_it_missed(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "flood.sh").write_text(
        "sleep 1\n"
        "i=0; while [ $i -lt 60000 ]; do echo line $i; i=$((i+1)); done\n"
        "sleep 6; echo done; exec sleep 1000\n"
    )
    write_plan(plan, {"flood": 'exec = ["sh", "flood.sh"]\n'})
    booted = boot(plan)
    booted.wait_state("flood", "ready")
    with booted.client(timeout=30) as client:
        stream = client.stream("logs", module="flood", lines=0, follow=True)
        next(stream)
        time.sleep(4)  # Read nothing while the module writes.
        dropped = 0
        last = ""
        for message in stream:
            if "dropped" in message:
                dropped += message["dropped"]
            elif "log" in message:
                last = message["log"]["text"]
                if last == "done":
                    break
    assert dropped > 0
    assert last == "done", "the stream went on after the drop"


def test_control_characters_in_output_are_shown_escaped(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "noisy.py").write_text(
        "import sys, time\n"
        "out = b'\\x1b[2J\\x1b]0;TITLE\\x07 red\\x1b[0m \\x00 \\x9b!\\n'\n"
        "sys.stdout.buffer.write(out)\n"
        "sys.stdout.flush()\n"
        "time.sleep(1000)\n"
    )
    write_plan(plan, {"noisy": 'exec = ["${python}", "noisy.py"]\n'})
    booted = boot(plan)
    booted.wait_state("noisy", "ready")
    deadline = time.monotonic() + 5
    shown = ""
    while "TITLE" not in shown and time.monotonic() < deadline:
        shown = booted.cli("logs", "noisy").stdout
        time.sleep(0.05)
    assert "\\x1b[2J\\x1b]0;TITLE\\x07 red\\x1b[0m \\x00 \\x9b!" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "\x00" not in shown


def test_start_waits_for_a_blocked_module_to_come_up(tmp_path: Path, boot) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    plan = write_plan(
        tmp_path / "plan",
        {
            "base": f"""
                exec = ["sh", "-c", "test -e {flag} && exit 1; exec sleep 1000"]
                restart = {{ delay = "10ms", limit = 2 }}
            """,
            "app": 'exec = "sleep 1000"\nrequires = ["base"]\n',
        },
    )
    booted = boot(plan)
    booted.wait_state("app", "blocked")
    flag.unlink()
    result = booted.cli("start", "app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("app: ready")


def test_bytes_that_are_not_utf8_get_an_error_reply(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    replies = raw_exchange(
        booted.socket,
        b'\xff\xfe\n{"v": 1, "id": 2, "op": "start", "module": "web", '
        b'"wait": "yes"}\n{"v": 1, "id": 3, "op": "hello"}\n',
    )
    assert replies[0]["error"] == {
        "message": "not UTF-8",
        "hint": "JSON, one object a line",
    }
    assert replies[1]["error"]["message"] == "wait must be true or false, got 'yes'"
    assert replies[2]["ok"] is True


def test_a_new_boot_stops_what_a_killed_orchestrator_left(tmp_path: Path, boot) -> None:
    plan = write_plan(tmp_path / "plan", {"sleeper": 'exec = "sleep 1000"\n'})
    first = boot(plan)
    record = first.wait_state("sleeper", "ready")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert pids_alive([record["pid"]]) == [record["pid"]], "orphaned, still running"
    second = boot(plan, env={"PARTENZA_RUNTIME_DIR": first.env["PARTENZA_RUNTIME_DIR"]})
    second.wait_state("sleeper", "ready")
    deadline = time.monotonic() + 5
    while pids_alive([record["pid"]]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_alive([record["pid"]]) == []
    assert "partenza: 1 process of an earlier run on " in second.output
    assert " is still alive (pids " in second.output
    # Both share one socket: stop the second before the first's folder goes.
    second.shutdown()


def test_a_port_held_by_another_process_does_not_make_a_module_ready(
    tmp_path: Path, boot
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    port = holder.getsockname()[1]
    try:
        plan = write_plan(
            tmp_path / "plan",
            {
                "late": f"""
                    exec = "sleep 1000"
                    restart = {{ policy = "never" }}
                    ready = {{ kind = "tcp", port = {port}, timeout = "500ms" }}
                """,
            },
        )
        booted = boot(plan)
        record = booted.wait_state("late", "failed")
        assert record["reason"] == (
            f"not ready after 500ms (tcp 127.0.0.1:{port}: 127.0.0.1:{port} answers, "
            "but from no process of late)"
        )
    finally:
        holder.close()


def test_sigusr1_prints_the_status_on_the_console(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    booted.wait_state("worker", "ready")
    os.kill(booted.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while "MODULE  STATE" not in booted.output:
        assert time.monotonic() < deadline, booted.output
        time.sleep(0.05)
    assert booted.proc.poll() is None


def test_a_status_table_with_long_names_fits_80_columns() -> None:
    from partenza.render import status_table

    now = time.time()
    record = {"state": "ready", "pid": 4242, "restarts": 0, "started_at": now - 5}
    modules = [
        {**record, "name": "a-module-with-a-name-of-sixty-four-characters-" + "x" * 18},
        {**record, "name": "web", "reason": "tcp 127.0.0.1:8080 answered"},
    ]
    system = {"state": "running", "reason": "", "plan": "p", "boot_started": now}
    lines = status_table({"system": system, "modules": modules}, 80).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[2].startswith("a-module-with-a-name-o~  ready  4242")
    assert lines[3].startswith("web ")


def test_the_status_says_when_pid_1_duties_were_asked_for(tmp_path: Path, boot) -> None:
    plan = write_plan(tmp_path / "plan", SIMPLE)
    plain = boot(plan)
    assert plain.request("status")["system"]["pid1"] is False
    plain.shutdown(timeout=20)
    told = boot(plan, "--pid1")
    assert told.request("status")["system"]["pid1"] is True


def _strict_json(line: bytes) -> dict:
    """A reply line, refusing what JSON does not have (NaN, Infinity)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a reply")

    return json.loads(line, parse_constant=refuse)


def _read_lines(sock: socket.socket) -> list[bytes]:
    """Everything the orchestrator sends on `sock` until it closes it."""
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass  # Closed with input unread: what it wrote is all there.
    return data.splitlines()


def _wait_output(booted, text: str, count: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while booted.output.count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} on the console:\n" + (
            booted.output
        )
        time.sleep(0.05)


def _flood_notes(path: Path, count: int) -> None:
    """Publish `count` note events of some 600 bytes each."""
    text = "x" * 480
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.settimeout(10)
        replies = sock.makefile("rb")
        for start in range(0, count, 500):
            sock.sendall(
                b"".join(
                    b'{"v":1,"id":%d,"op":"note","text":"%s"}\n' % (n, text.encode())
                    for n in range(start, start + 500)
                )
            )
            for _ in range(500):
                assert _strict_json(replies.readline())["ok"] is True


def _stuck_subscriber(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(str(path))
    sock.settimeout(10)
    sock.sendall(b'{"v": 1, "id": 9, "op": "subscribe"}\n')
    return sock


def test_a_subscriber_that_stops_reading_is_cut_off_and_told_why(
    tmp_path: Path, boot
) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    booted.wait_state("worker", "ready")
    late = _stuck_subscriber(booted.socket)  # Reads, but only at the end.
    never = _stuck_subscriber(booted.socket)  # Never reads at all.
    try:
        # Some 3.6 MB of events: far more than may wait for one client.
        _flood_notes(booted.socket, 6000)
        _wait_output(booted, f"event stream of pid {os.getpid()} cut off: too slow", 2)
        lines = _read_lines(late)
        messages = [_strict_json(line) for line in lines]
        assert messages[0]["ok"] is True and "modules" in messages[0]["result"]
        seqs = [message["event"]["seq"] for message in messages[1:-1]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gaps"
        assert messages[-1]["error"] == {
            "message": "too slow: the stream fell behind",
            "hint": "subscribe again",
        }
        # Cut off well before the 6,000 notes: what waited for it was bounded.
        assert len(seqs) < 3000
        # The one that never reads is let go all the same.
        poller = select.poll()
        poller.register(never, select.POLLIN)
        deadline = time.monotonic() + 15
        while not any(mask & select.POLLHUP for _, mask in poller.poll(100)):
            assert time.monotonic() < deadline, "the stuck subscriber was kept"
        assert booted.request("hello")["protocol"] == 1
    finally:
        late.close()
        never.close()


def test_a_log_follower_that_stops_reading_loses_lines_past_a_bounded_backlog(
    tmp_path: Path, boot
) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "flood.py").write_text(
        "import os, sys, time\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.02)\n"
        "for n in range(2000):\n"
        "    sys.stdout.write(f'{n:05} ' + 'y' * 8000 + '\\n')\n"
        "sys.stdout.flush()\n"
        "open('flooded', 'w').close()\n"
        "while not os.path.exists('end'):\n"
        "    time.sleep(0.02)\n"
        "print('done', flush=True)\n"
        "time.sleep(1000)\n"
    )
    write_plan(plan, {"flood": 'exec = ["${python}", "flood.py"]\n'})
    booted = boot(plan)
    booted.wait_state("flood", "ready")
    with booted.client(timeout=30) as client:
        stream = client.stream("logs", module="flood", lines=0, follow=True)
        next(stream)
        # Some 16 MB of lines, in 2,000 of them, while this reads nothing.
        (plan / "go").touch()
        deadline = time.monotonic() + 30
        while not (plan / "flooded").exists():
            assert time.monotonic() < deadline, booted.output
            time.sleep(0.05)
        (plan / "end").touch()
        before_drop = 0
        dropped = 0
        last = ""
        for message in stream:
            if "dropped" in message:
                dropped += message["dropped"]
            elif "log" in message:
                last = message["log"]["text"]
                if not dropped:
                    before_drop += len(last)
                if last == "done":
                    break
    assert dropped > 0
    assert before_drop < 4 << 20, "more than the bound waited for the follower"
    assert last == "done", "the stream went on after the drop"


def test_deeply_nested_json_gets_an_error_reply(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    replies = raw_exchange(
        booted.socket,
        b"[" * 100000
        + b"\n"
        + b'{"v": 1, "id": '
        + b"[" * 40
        + b"]" * 40
        + b', "op": "hello"}\n'
        + b'{"v": 1, "id": 3, "op": "hello"}\n',
    )
    assert [reply["error"] for reply in replies[:2]] == [
        {
            "message": "request nested too deeply",
            "hint": "at most 32 levels of arrays and objects",
        }
    ] * 2
    assert replies[2]["ok"] is True and replies[2]["id"] == 3
    assert "Traceback" not in booted.output and "Unhandled" not in booted.output


def test_only_the_integer_1_is_a_version_and_numbers_must_be_finite(
    tmp_path: Path, boot
) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    requests = [
        b'{"v": true, "id": 1, "op": "hello"}',
        b'{"v": 1.0, "id": 2, "op": "hello"}',
        b'{"v": 1, "id": NaN, "op": "hello"}',
        b'{"v": 1, "id": 4, "op": "start", "module": "web", "timeout": NaN}',
        b'{"v": 1, "id": 5, "op": "start", "module": "web", "timeout": 1e400}',
        b'{"v": 1, "id": 6, "op": "start", "module": "web", "timeout": -1}',
        b'{"v": 1, "id": 7, "op": "start", "module": "web", "timeout": true}',
        b'{"v": 1, "id": 8, "op": "start", "module": "web", "timeout": 1'
        + b"0" * 400
        + b"}",
        b'{"v": 1, "id": 9, "op": "hello"}',
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(booted.socket))
        sock.settimeout(10)
        sock.sendall(b"\n".join(requests) + b"\n")
        replies_file = sock.makefile("rb")
        replies = [_strict_json(replies_file.readline()) for _ in requests]
    errors = [reply.get("error", {}).get("message") for reply in replies]
    assert errors[:3] == [
        "protocol version True is not spoken here",
        "protocol version 1.0 is not spoken here",
        "not JSON: NaN is not a JSON number",
    ]
    assert replies[2]["id"] is None
    assert errors[3] == "not JSON: NaN is not a JSON number"
    assert errors[4] == "number out of range: 1e400"
    assert errors[5] == "timeout must be seconds, 0 or more; got -1"
    assert errors[6] == "timeout must be seconds, 0 or more; got True"
    assert errors[7].startswith("timeout must be seconds, 0 or more; got 1000")
    assert replies[8]["ok"] is True and replies[8]["id"] == 9


def test_connections_past_the_cap_are_told_so_and_closed(tmp_path: Path, boot) -> None:
    booted = boot(write_plan(tmp_path / "plan", SIMPLE))
    held: list[socket.socket] = []
    try:
        for _ in range(256):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(booted.socket))
            held.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            # Blocking: it waits in the listen backlog behind the others.
            extra.connect(str(booted.socket))
            extra.settimeout(10)
            lines = _read_lines(extra)
        assert [_strict_json(line) for line in lines] == [
            {
                "v": 1,
                "id": None,
                "ok": False,
                "error": {
                    "message": "too many connections: 256 are open",
                    "hint": "try again once some have closed",
                },
            }
        ]
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert booted.request("hello")["protocol"] == 1
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


def test_a_connection_that_sends_no_whole_request_is_closed_when_idle(
    tmp_path: Path, boot
) -> None:
    booted = boot(
        write_plan(tmp_path / "plan", SIMPLE), env={"PARTENZA_CONTROL_IDLE": "1"}
    )
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    follower = booted.client(timeout=10)
    try:
        for sock in (silent, partial):
            sock.connect(str(booted.socket))
            sock.settimeout(10)
        partial.sendall(b'{"v": 1, "op": "hel')
        events = follower.stream("subscribe")
        next(events)
        for sock in (silent, partial):
            assert [_strict_json(line)["error"] for line in _read_lines(sock)] == [
                {
                    "message": "connection closed: no whole request in 1 s",
                    "hint": "send each request as one line, newline included",
                }
            ]
        # A subscriber has made its request: it is not idle, however quiet.
        time.sleep(1.5)
        booted.request("note", text="still there")
        event = next(events)["event"]
        while event["type"] != "note":
            event = next(events)["event"]
        assert event["text"] == "still there"
    finally:
        silent.close()
        partial.close()
        follower.close()


def test_out_of_open_files_accepting_pauses_without_flooding_the_console(
    tmp_path: Path,
) -> None:
    plan = write_plan(tmp_path / "plan", SIMPLE)
    base = Path(tempfile.mkdtemp(prefix="pz-", dir="/tmp"))
    env = partenza_env(base)
    path = base / "run" / "control.sock"

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with open(tmp_path / "boot.out", "wb") as output:
        proc = subprocess.Popen(
            [PARTENZA, "boot", str(plan)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=few_files,
        )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(90):  # More than the orchestrator has files left for.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            held.append(sock)
        time.sleep(3)
        for sock in held:
            sock.close()
        held.clear()
        with Client(path, timeout=10) as client:
            assert client.request("hello")["protocol"] == 1
        console = (tmp_path / "boot.out").read_text(errors="replace")
        paused = [line for line in console.splitlines() if "accepting paused" in line]
        assert len(paused) == 1, console
        assert paused[0].endswith("accepting paused for 1 s: Too many open files")
        assert "internal error" not in console
    finally:
        for sock in held:
            sock.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        kill_marked(env[MARK])
        shutil.rmtree(base, ignore_errors=True)
