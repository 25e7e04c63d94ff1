"""Built-in sidecars, the logging module and its fallback, system failover,
with real processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import (
    DEMO,
    PARTENZA,
    free_port,
    partenza_env,
    pids_alive,
    write_plan,
)
from tests.test_contract import events_until, wait_line

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"from the target\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

COUNTER = """
import sys, time
for number in range(1, 10001):
    print(f"number {number}", flush=True)
    if number % 500 == 0:
        time.sleep(0.05)
time.sleep(1000)
"""


def test_the_verifier_vouches_for_its_target_before_it_is_ready(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "verify": """
                exec = "${python} -m partenza.modules.verifier"
                sidecar = true
                ready = { kind = "handshake" }
            """,
            "web": 'exec = "sleep 1000"\nsidecars = ["verify"]\n',
            "verify2": """
                exec = "${python} -m partenza.modules.verifier"
                sidecar = true
                ready = { kind = "handshake" }
            """,
            "impostor": """
                exec = [
                    "sh", "-c",
                    "exec env PARTENZA_TOKEN=x sh -c 'touch took-over; exec sleep 99'",
                ]
                sidecars = ["verify2"]
                restart = { policy = "never" }
                ready = { kind = "file", path = "took-over" }
            """,
        },
    )
    booted = boot(plan)
    web = booted.wait_state("web", "ready")
    assert web["reason"] == "process started; verified by verify"
    wait_line(booted, "verify", "verifier: web verified")
    impostor = booted.wait_state("impostor", "failed")
    assert impostor["reason"] == (
        "verify2 did not verify it: the token in its environment is not the "
        "token of this start"
    )


def test_the_proxy_exposes_its_target_and_limits_the_rate(tmp_path: Path, boot) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "target_server.py").write_text(SERVER)
    inner, outer = free_port(), free_port()
    write_plan(
        plan,
        {
            "limit": f"""
                exec = [
                    "${{python}}", "-m", "partenza.modules.proxy",
                    "--listen", "127.0.0.1:{outer}",
                    "--to", "http://127.0.0.1:{inner}",
                    "--rate", "2", "--burst", "5",
                ]
                sidecar = true
                ready = {{ kind = "tcp", port = {outer} }}
            """,
            "app": f"""
                exec = ["${{python}}", "target_server.py", "{inner}"]
                sidecars = ["limit"]
                ready = {{ kind = "tcp", port = {inner} }}
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("app", "ready")
    answers = []
    for _ in range(15):
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{outer}/", timeout=5
            ) as reply:
                answers.append((reply.status, reply.read()))
        except urllib.error.HTTPError as error:
            answers.append((error.code, error.headers.get("Retry-After")))
    passed = [a for a in answers if a[0] == 200]
    limited = [a for a in answers if a[0] == 429]
    assert 5 <= len(passed) <= 7, answers
    assert len(limited) == 15 - len(passed)
    assert all(body == b"from the target\n" for _, body in passed)
    assert all(retry == "1" for _, retry in limited)


def test_the_metrics_sidecar_samples_its_target(tmp_path: Path, boot) -> None:
    prom = tmp_path / "web.prom"
    plan = write_plan(
        tmp_path / "plan",
        {
            "measure": f"""
                exec = [
                    "${{python}}", "-m", "partenza.modules.metrics",
                    "--every", "100ms", "--file", "{prom}",
                ]
                sidecar = true
                ready = {{ kind = "handshake" }}
            """,
            "web": """
                exec = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]
                sidecars = ["measure"]
            """,
        },
    )
    booted = boot(plan)
    booted.wait_state("web", "ready")
    events = events_until(
        booted, lambda e: e["type"] == "metrics" and e["processes"] >= 3
    )
    figures = events[-1]
    assert figures["module"] == "web" and figures["by"] == "measure"
    assert figures["rss"] > 100_000 and figures["open_files"] >= 3
    record = booted.module("web")
    assert record["metrics"]["processes"] >= 3
    deadline = time.monotonic() + 5
    while not prom.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = prom.read_text()
    assert "# TYPE partenza_module_resident_bytes gauge" in text
    assert 'partenza_module_processes{module="web"} 3' in text


def test_no_line_is_lost_when_the_logging_module_dies(tmp_path: Path, boot) -> None:
    kept = tmp_path / "all.log"
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "count.py").write_text(COUNTER)
    write_plan(
        plan,
        {
            "logger": f"""
                exec = [
                    "${{python}}", "-m", "partenza.modules.logger", "--file", "{kept}"
                ]
                provides = ["logging"]
                ready = {{ kind = "handshake" }}
                restart = {{ delay = "300ms" }}
            """,
            "counter": 'exec = ["${python}", "count.py"]\nafter = ["logger"]\n',
        },
    )
    booted = boot(plan)
    booted.wait_state("counter", "ready")
    # Kill the logger partway through the stream.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if kept.exists() and kept.read_text().count("number ") > 1500:
            break
        time.sleep(0.01)
    logger_pid = booted.module("logger")["pid"]
    os.kill(logger_pid, signal.SIGKILL)
    booted.wait_for(
        lambda s: any(
            m["name"] == "logger" and m["state"] == "ready" and m["pid"] != logger_pid
            for m in s["modules"]
        ),
        what="the logger back",
    )
    wait_line(booted, "counter", "number 10000")
    fallback = booted.base / "state" / "fallback.log"
    deadline = time.monotonic() + 10
    seen_logger: list[int] = []
    seen_fallback: list[int] = []
    while time.monotonic() < deadline:
        seen_logger = _numbers(kept)
        seen_fallback = _numbers(fallback)
        if set(seen_logger) | set(seen_fallback) >= set(range(1, 10001)):
            break
        time.sleep(0.1)
    missing = set(range(1, 10001)) - set(seen_logger) - set(seen_fallback)
    assert not missing, f"{len(missing)} lines lost, from {min(missing)}"
    assert seen_fallback, "the fallback took lines while the logger was down"
    for seen in (seen_logger, seen_fallback):
        assert _in_order_per_pass(seen)
    assert "the logging module is gone; output goes to the fallback" in booted.output


def _numbers(path: Path) -> list[int]:
    if not path.exists():
        return []
    numbers = []
    for line in path.read_text().splitlines():
        if " counter out number " in line:
            numbers.append(int(line.rsplit(" ", 1)[1]))
    return numbers


def _in_order_per_pass(numbers: list[int]) -> bool:
    """In order, allowing the replay of a backlog to start again lower."""
    runs = 0
    for before, after in itertools.pairwise(numbers):
        if after <= before:
            runs += 1
    return runs <= 1


def test_a_system_failover_ends_on_the_fallback_plan(tmp_path: Path, boot) -> None:
    write_plan(tmp_path / "minimal", {"keeper": 'exec = "sleep 1000"\n'})
    main = write_plan(
        tmp_path / "main",
        {
            "db": """
                exec = ["sh", "-c", "sleep 1; exit 5"]
                critical = true
                on_failure = "fallback"
                restart = { delay = "20ms", limit = 2 }
            """,
            "api": 'exec = "sleep 1000"\nrequires = ["db"]\n',
            "other": 'exec = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]\n',
        },
    )
    (main / "plan.toml").write_text('name = "main"\nfallback = "../minimal"\n')
    booted = boot(main)
    first = booted.wait_state("other", "ready")
    other_group = first["pid"]
    snapshot = booted.wait_for(
        lambda s: (
            s["system"]["plan"] == "minimal" and s["system"]["state"] == "running"
        ),
        what="the fallback plan running",
    )
    assert [m["name"] for m in snapshot["modules"]] == ["keeper"]
    assert snapshot["system"]["fallback_of"] == "main"
    assert snapshot["system"]["fallback_reason"].startswith("db failed: exited 5")
    members = [
        int(p) for p in os.listdir("/proc") if p.isdigit() and _group(p) == other_group
    ]
    assert pids_alive(members) == []
    assert "switching to the fallback plan minimal: db failed" in booted.output
    status = booted.cli("status")
    assert status.stdout.startswith("minimal: running")


def _group(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None


def test_what_if_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [PARTENZA, "plan", str(DEMO), "--fail", "web"],
        env=partenza_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "  blocked: worker (requires web, which failed)" in result.stdout
    assert result.stdout.strip().endswith("then the system goes on degraded")
    wrong = subprocess.run(
        [PARTENZA, "plan", str(DEMO), "--fail", "wbe"],
        env=partenza_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 1
    assert (
        wrong.stderr == "partenza: no module 'wbe' in the plan (did you mean 'web'?)\n"
    )
    assert sys.executable


def _events(booted, stop) -> list[dict]:
    return events_until(booted, stop, timeout=20)


def test_failover_with_real_processes_holds_dependents_back(
    tmp_path: Path, boot
) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "primary": """
                exec = ["sh", "-c", "sleep 0.5; exit 1"]
                provides = ["db"]
                priority = 10
                on_failure = "failover"
                restart = { delay = "20ms", limit = 2 }
            """,
            "backup": """
                exec = ["sh", "-c", "sleep 0.3; touch backup-up; exec sleep 1000"]
                provides = ["db"]
                ready = { kind = "file", path = "backup-up" }
            """,
            "api": 'exec = "sleep 1000"\nrequires = ["db"]\n',
        },
    )
    booted = boot(plan)
    events = _events(
        booted,
        lambda e: e["type"] == "state" and e["module"] == "api" and e["new"] == "ready",
    )
    first_api = next(
        e for e in events if e.get("module") == "api" and e["new"] == "ready"
    )
    events = _events(booted, lambda e: e["type"] == "failover")
    failover = events[-1]
    assert (failover["failed"], failover["provider"]) == ("primary", "backup")
    assert failover["dependents"] == ["api"]
    record = booted.wait_for(
        lambda s: any(
            m["name"] == "api"
            and m["state"] == "ready"
            and m["pid"] != first_api["pid"]
            for m in s["modules"]
        ),
        what="api running again on backup",
    )
    api = next(m for m in record["modules"] if m["name"] == "api")
    assert api["deps"] == [{"kind": "requires", "via": "db", "module": "backup"}]
    everything = _events(booted, lambda e: e["seq"] >= record["seq"])
    backup_ready = next(
        e["time"]
        for e in everything
        if e.get("module") == "backup" and e["new"] == "ready"
    )
    api_restart = [
        e["time"]
        for e in everything
        if e.get("module") == "api" and e.get("new") == "initializing"
    ][-1]
    assert backup_ready <= api_restart, "api waited for the new provider"


def test_sidecars_with_real_processes(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "steady": 'exec = "sleep 1000"\nsidecar = true\n',
            "web": 'exec = "sleep 1000"\nsidecars = ["steady"]\n',
            "job": """
                exec = ["sh", "-c", "sleep 0.5"]
                sidecars = ["jobside"]
            """,
            "jobside": 'exec = "sleep 1000"\nsidecar = true\n',
        },
    )
    booted = boot(plan)
    web = booted.wait_state("web", "ready")
    steady = booted.module("steady")
    assert steady["ready_at"] <= web["started_at"], "the sidecar is ready first"
    # A crashing sidecar is restarted without bouncing its target.
    os.kill(steady["pid"], signal.SIGKILL)
    booted.wait_for(
        lambda s: any(
            m["name"] == "steady"
            and m["state"] == "ready"
            and m["pid"] != steady["pid"]
            for m in s["modules"]
        ),
        what="the sidecar back",
    )
    assert booted.module("web")["pid"] == web["pid"]
    # A target that finishes ends its sidecar.
    jobside = booted.wait_state("jobside", "stopped")
    assert jobside["reason"].startswith("its target job is stopped")
    # And at shutdown the sidecar stops after its target.
    booted.shutdown()
    output = booted.output
    assert output.index("[  OK  ] web: stopped") < output.index(
        "[  OK  ] steady: stopped"
    )
