"""Partenza as PID 1 of a PID namespace (`unshare --pid --fork --mount-proc`).

The orchestrator is the namespace's init: orphans are reparented to it, and it
gets no signal it has no handler for. It is signalled by its pid on the host,
the child of the `unshare` process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from partenza.client import Client, ClientError
from tests.conftest import PARTENZA, kill_marked, partenza_env, short_dir, write_plan

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace needs root and unshare",
)


class Namespace:
    """`partenza boot PLAN` as PID 1 of a new PID namespace."""

    def __init__(self, plan: Path, base: Path) -> None:
        self.runtime = short_dir()
        self.env = partenza_env(base, self.runtime / "run")
        self.socket = self.runtime / "run" / "control.sock"
        self.output_path = base / "boot.out"
        self._output = open(self.output_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", PARTENZA, "boot", str(plan)],
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def init_pid(self, timeout: float = 10.0) -> int:
        """The host pid of the namespace's PID 1."""
        deadline = time.monotonic() + timeout
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        while time.monotonic() < deadline:
            try:
                children = Path(path).read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.02)
        raise AssertionError(f"unshare started no child:\n{self.output}")

    def request(self, op: str, **params: object) -> dict:
        deadline = time.monotonic() + 15
        while True:
            try:
                with Client(self.socket, timeout=10) as client:
                    return client.request(op, **params)
            except ClientError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    message = f"no answer from PID 1:\n{self.output}"
                    raise AssertionError(message) from None
                time.sleep(0.05)

    def wait_for(self, predicate: object, what: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        snapshot: dict = {}
        while time.monotonic() < deadline:
            snapshot = self.request("status")
            if predicate(snapshot):  # type: ignore[operator]
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {snapshot}\n{self.output}")

    def wait_output(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"never printed {text!r}:\n{self.output}")
            time.sleep(0.05)

    def end(self) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._output.close()
        kill_marked(self.env["PZTEST_RUN"])
        shutil.rmtree(self.runtime, ignore_errors=True)
        return self.proc.returncode


def _all_ready(snapshot: dict) -> bool:
    return all(m["state"] == "ready" for m in snapshot["modules"])


def _zombies_under(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
            except OSError:
                continue
            for child in children.split():
                try:
                    stat = Path(f"/proc/{child}/stat").read_text()
                except OSError:
                    continue
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    found.append(int(child))
                queue.append(int(child))
    return found


def test_a_thousand_orphans_are_reaped_and_no_zombie_is_left(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "spawner": """
                exec = [
                    "sh", "-c",
                    '''i=0
                    while [ $i -lt 1000 ]; do (sleep 0.2 &); i=$((i+1)); done
                    echo spawned
                    exec sleep 1000''',
                ]
                ready = { kind = "log", pattern = "spawned", timeout = "60s" }
            """,
        },
    )
    namespace = Namespace(plan, tmp_path)
    try:
        snapshot = namespace.wait_for(_all_ready, "the spawner", timeout=60)
        assert snapshot["system"]["pid1"] is True
        snapshot = namespace.wait_for(
            lambda s: s["system"]["orphans_reaped"] >= 1000, "a thousand orphans reaped"
        )
        time.sleep(0.3)
        assert _zombies_under(namespace.init_pid()) == []
    finally:
        namespace.end()


def test_sigterm_is_an_orderly_poweroff_within_its_timeout(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "db": 'exec = "sleep 1000"\n',
            "api": """
                exec = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]
                requires = ["db"]
            """,
        },
    )
    namespace = Namespace(plan, tmp_path)
    try:
        namespace.wait_for(_all_ready, "every module ready")
        started = time.monotonic()
        os.kill(namespace.init_pid(), signal.SIGTERM)
        assert namespace.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        output = namespace.output
        api = output.index("[  OK  ] api: stopped")
        assert api < output.index("[  OK  ] db: stopped")
        assert "shutting down (SIGTERM)" in output
        assert "every module stopped" in output
    finally:
        namespace.end()


def test_the_main_modules_exit_status_is_passed_on(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "app": """
                exec = ["sh", "-c", "sleep 0.5; exit 7"]
                restart = { policy = "never" }
            """,
            "helper": 'exec = "sleep 1000"\n',
        },
    )
    (plan / "plan.toml").write_text('main = "app"\n')
    namespace = Namespace(plan, tmp_path)
    try:
        assert namespace.proc.wait(20) == 7
        assert "the main module app ended (exited 7)" in namespace.output
    finally:
        namespace.end()


def test_sighup_reloads_and_busyboxs_poweroff_signal_powers_off(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"web": 'exec = "sleep 1000"\n'})
    namespace = Namespace(plan, tmp_path)
    try:
        namespace.wait_for(_all_ready, "web ready")
        (plan / "web.toml").write_text('exec = "sleep 2000"\n')
        os.kill(namespace.init_pid(), signal.SIGHUP)
        namespace.wait_output("partenza: reloaded: changed web")
        namespace.wait_for(_all_ready, "web back")
        assert namespace.proc.poll() is None, "SIGHUP does not end PID 1"
        os.kill(namespace.init_pid(), signal.SIGUSR2)
        assert namespace.proc.wait(15) == 0
        assert "shutting down (SIGUSR2 (poweroff))" in namespace.output
    finally:
        namespace.end()


def test_a_power_off_asked_during_a_hung_reboot_powers_off(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "stubborn": """
                exec = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
                stop = { timeout = "30s" }
            """,
        },
    )
    namespace = Namespace(plan, tmp_path)
    try:
        namespace.wait_for(_all_ready, "stubborn ready")
        pid = namespace.init_pid()
        os.kill(pid, signal.SIGINT)
        namespace.wait_output("shutting down (Ctrl-Alt-Del)")
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert namespace.proc.wait(15) == 0, "it ended instead of booting again"
        assert time.monotonic() - started < 10, "the stuck module was killed"
        output = namespace.output
        assert "partenza: SIGTERM: poweroff instead of reboot" in output
        assert "signalled again: killing every module now" in output
        assert output.count("booting plan") == 1
    finally:
        namespace.end()
