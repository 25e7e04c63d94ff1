"""Shared test harness: plan folders, free ports, and a real `partenza boot`.

Every orchestrator a test starts runs with its own runtime and state dirs
under the test's tmp_path, in a process group of its own, and is ended by
that group at teardown whatever happened in the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from partenza.client import Client, ClientError
from partenza.process import processes_carrying

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
PYTHON = sys.executable
PARTENZA = str(Path(sys.executable).with_name("partenza"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_plan(folder: Path, manifests: dict[str, str]) -> Path:
    """Write `{"web": "toml text", ...}` as `web.toml` ... into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in manifests.items():
        filename = name if name.endswith(".toml") else f"{name}.toml"
        (folder / filename).write_text(textwrap.dedent(text).lstrip())
    return folder


def copy_demo(folder: Path) -> tuple[Path, int]:
    """A copy of the demo plan on a free port; returns the folder and the port."""
    shutil.copytree(DEMO, folder)
    port = free_port()
    for manifest in folder.glob("*.toml"):
        text = manifest.read_text().replace("8421", str(port))
        manifest.write_text(text)
    return folder, port


MARK = "PZTEST_RUN"
"""Set in every test orchestrator's environment; its modules inherit it."""


def short_dir() -> Path:
    """A folder with a short path: Unix socket paths may not pass 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="pz-", dir="/tmp"))


def partenza_env(base: Path, runtime: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[MARK] = f"{os.getpid()}-{time.monotonic_ns()}"
    env["PARTENZA_RUNTIME_DIR"] = str(runtime or base / "run")
    env["PARTENZA_STATE_DIR"] = str(base / "state")
    env["NO_COLOR"] = "1"
    env.pop("PARTENZA_SOCKET", None)
    return env


class Booted:
    """A `partenza boot` subprocess and the ways to talk to it."""

    def __init__(
        self, plan: Path, base: Path, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.plan = plan
        self.base = base
        self.runtime = short_dir()
        self.env = partenza_env(base, self.runtime / "run")
        self.env.update(env or {})
        self.socket = Path(self.env["PARTENZA_RUNTIME_DIR"]) / "control.sock"
        base.mkdir(parents=True, exist_ok=True)
        self.output_path = base / "boot.out"
        self.leftovers: list[int] = []
        self._output = open(self.output_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PARTENZA, "boot", str(plan), *args],
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def client(self, timeout: float | None = 30.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def request(self, op: str, **params: Any) -> dict[str, Any]:
        with self.client() as client:
            return client.request(op, **params)

    def cli(
        self, *args: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `partenza ARGS` against this orchestrator."""
        return subprocess.run(
            [PARTENZA, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_socket(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"partenza boot exited {self.proc.returncode}:\n{self.output}"
                )
            try:
                self.request("hello")
                return
            except ClientError:
                time.sleep(0.05)
        raise AssertionError(f"no control socket after {timeout}s:\n{self.output}")

    def module(self, name: str) -> dict[str, Any]:
        return self.request("status", module=name)["module"]

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
        what: str = "the condition",
    ) -> dict[str, Any]:
        """Poll the status until `predicate(snapshot)` holds; return the snapshot."""
        deadline = time.monotonic() + timeout
        snapshot: dict[str, Any] = {}
        while time.monotonic() < deadline:
            snapshot = self.request("status")
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        states = {
            m["name"]: (m["state"], m["reason"]) for m in snapshot.get("modules", [])
        }
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; states: "
            f"{json.dumps(states, indent=1)}\nconsole:\n{self.output}"
        )

    def wait_state(
        self, name: str, state: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        snapshot = self.wait_for(
            lambda s: _state_of(s, name) == state, timeout, f"{name} to be {state}"
        )
        return next(m for m in snapshot["modules"] if m["name"] == name)

    def shutdown(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                self.request("shutdown")
            except ClientError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.finish()

    def finish(self) -> int:
        """End the orchestrator's process group, whatever its state; its exit code."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._output.close()
        self.leftovers = kill_marked(self.env[MARK])
        shutil.rmtree(self.runtime, ignore_errors=True)
        return self.proc.returncode


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries this test run's mark."""
    return processes_carrying(f"{MARK}={mark}")


def kill_marked(mark: str) -> list[int]:
    """SIGKILL every process of this test run still alive; which ones were."""
    found = marked_processes(mark)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def _state_of(snapshot: dict[str, Any], name: str) -> str | None:
    for record in snapshot["modules"]:
        if record["name"] == name:
            return record["state"]
    return None


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Callable[..., Booted]]:
    """Start `partenza boot PLAN` for a test; always ended at teardown."""
    started: list[Booted] = []

    def start(
        plan: Path, *args: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> Booted:
        base = tmp_path / f"orchestrator{len(started)}"
        booted = Booted(plan, base, list(args), env)
        started.append(booted)
        if wait:
            booted.wait_socket()
        return booted

    yield start
    for booted in started:
        booted.shutdown(timeout=20)


def pids_alive(pids: list[int]) -> list[int]:
    """The pids of `pids` that still exist as something other than a zombie."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive
