"""The rescue shell on a real pseudo-terminal, driven by pexpect.

Each test boots a plan, waits for it to reach the state it needs, and starts
`partenza rescue` on an 80x24 pty against that orchestrator's socket, as the
orchestrator would on the console: TERM=vt100, NO_COLOR=1, no cursor-position
requests. The password is checked against a shadow file written by the test,
never against this machine's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import time
from pathlib import Path

import pexpect
import pytest

from partenza.client import Client
from rescue import auth
from tests.conftest import (
    MARK,
    PARTENZA,
    Booted,
    kill_marked,
    partenza_env,
    pids_alive,
    short_dir,
    write_plan,
)

TIMEOUT = 10
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")
FAILING_DB = """
    description = "the database"
    exec = ["sh", "-c", "echo starting db; echo 'db: cannot open /data' >&2; exit 3"]
    critical = true
    [restart]
    delay = "50ms"
    max_delay = "100ms"
    limit = 2
    window = "10s"
"""
FIXED_DB = 'description = "the database"\nexec = "sleep 1000"\ncritical = true\n'
WEB = 'exec = "sleep 1000"\nrequires = ["db"]\n'
ALLOW_EMPTY = '[rescue]\nempty_password = "allow"\n'
SH_PROMPT = "sh-under-rescue$ "


class Screen:
    """A `partenza rescue` on a pty; every wait reports the screen's tail."""

    def __init__(self, booted: Booted, *args: str, **env: str) -> None:
        environment = {
            **booted.env,
            "TERM": "vt100",
            "NO_COLOR": "1",
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "SHELL": "/bin/sh",
            "PS1": SH_PROMPT,
            **env,
        }
        self.child = pexpect.spawn(
            PARTENZA,
            ["--socket", str(booted.socket), "rescue", *args],
            env=environment,
            dimensions=(24, 80),
            encoding="utf-8",
            codec_errors="replace",
            timeout=TIMEOUT,
        )
        self.seen = ""

    def expect(self, pattern: str, regex: bool = False) -> re.Match[str] | str:
        """Wait for `pattern` (plain text, or a regex) in the text on screen."""
        try:
            if regex:
                self.child.expect(pattern)
            else:
                self.child.expect_exact(pattern)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            tail = ANSI.sub("", (self.child.before or "")[-1500:])
            kind = "timed out" if isinstance(exc, pexpect.TIMEOUT) else "the end came"
            raise AssertionError(
                f"{kind} waiting for {pattern!r}; the screen's tail:\n{tail}"
            ) from None
        self.seen += ANSI.sub("", (self.child.before or "") + str(self.child.after))
        return self.child.match if regex else pattern

    def prompt(self, state: str) -> None:
        self.expect(f"rescue ({state})>")

    def run(self, line: str) -> None:
        self.child.sendline(line)

    def finished(self) -> int:
        """Wait for the end; the exit status."""
        try:
            self.child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            tail = ANSI.sub("", (self.child.before or "")[-1500:])
            raise AssertionError(
                f"timed out waiting for the shell to end; the screen's tail:\n{tail}"
            ) from None
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)


def shadow(folder: Path, field: str) -> Path:
    path = folder / "shadow"
    path.write_text(f"root:{field}:19000:0:99999:7:::\n")
    return path


def boot_in_rescue(boot, plan: Path) -> Booted:
    booted = boot(plan)
    booted.wait_for(lambda s: s["system"]["state"] == "rescue", what="rescue")
    return booted


def test_from_the_bluescreen_to_a_running_system(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan", {"db": FAILING_DB, "web": WEB, "plan.toml": ALLOW_EMPTY}
    )
    booted = boot_in_rescue(boot, plan)
    fixer = tmp_path / "fix-db"
    fixer.write_text(f"#!/bin/sh\nprintf '%s' '{FIXED_DB}' > \"$1\"\n")
    fixer.chmod(fixer.stat().st_mode | stat.S_IXUSR)
    screen = Screen(
        booted,
        "--bluescreen",
        "db",
        PARTENZA_RESCUE_SHADOW=str(shadow(tmp_path, "")),
        EDITOR=str(fixer),
    )
    try:
        # The report, then the shell without a password, as the plan allows.
        screen.expect(" PARTENZA RESCUE: db failed and is critical")
        screen.expect("  stage     running (it was started, then ended)")
        screen.expect("  blocked   web")
        screen.expect("  manifest  ")
        screen.expect(" earlier lines not shown)")
        unwrapped = re.sub(r"\n {12}", "", screen.seen)
        assert f"  manifest  {plan / 'db.toml'}\n" in unwrapped
        screen.expect("  ! db: cannot open /data")
        screen.expect('root has an empty password; allowed (empty_password = "allow")')
        screen.prompt("db failed")
        # Why it failed, and what it wrote.
        screen.run("why web")
        screen.expect("web blocked: requires db, which failed")
        screen.expect("<- db failed: exited 3 after 1 restart")
        screen.expect("  error:    exited 3; start limit spent (2 in 10s)")
        screen.prompt("db failed")
        screen.run("logs db")
        screen.expect("| starting db")
        screen.expect("! db: cannot open /data")
        screen.prompt("db failed")
        # Mend it through the editor, then apply and resume.
        screen.run("edit db")
        screen.expect(f"{plan / 'db.toml'}: saved")
        screen.expect("the plan is valid; `reload` would change db")
        screen.prompt("db failed")
        screen.run("reload")
        screen.expect("reloaded: changed db")
        screen.expect("  db: ready")
        screen.prompt("running")
        screen.run("continue")
        screen.expect("resuming the boot: plan is running (every module is up)")
        assert screen.finished() == 0
    finally:
        screen.close()
    assert booted.request("status")["system"]["state"] == "running"
    assert (plan / "db.toml").read_text() == FIXED_DB
    history = Path(booted.env["PARTENZA_STATE_DIR"]) / "rescue_history"
    assert "+edit db\n" in history.read_text()


def test_poweroff_from_the_shell_leaves_no_process_behind(tmp_path: Path, boot) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "db": FAILING_DB,
            "web": WEB,
            "cache": 'exec = "sleep 1000"\n',
            "plan.toml": ALLOW_EMPTY,
        },
    )
    booted = boot_in_rescue(boot, plan)
    booted.wait_state("cache", "ready")
    screen = Screen(booted, PARTENZA_RESCUE_SHADOW=str(shadow(tmp_path, "!")))
    try:
        screen.expect("root's password is locked; allowed (empty_password")
        screen.prompt("db failed")
        # Following a log: Ctrl-C on the terminal comes back to the prompt.
        screen.run("logs db -f -n 1")
        screen.expect("(following db; Ctrl-C returns to the prompt)")
        screen.child.sendintr()
        screen.expect("(stopped following db)")
        screen.prompt("db failed")
        # A shell with job control: its own group, in the foreground.
        screen.run("sh")
        screen.expect(SH_PROMPT)
        screen.run("echo group=$(cut -d' ' -f1,5,8 /proc/$$/stat | tr ' ' ,)")
        found = screen.expect(r"group=(\d+),(\d+),(\d+)", regex=True)
        assert isinstance(found, re.Match)
        pid, group, foreground = (int(n) for n in found.groups())
        assert group == pid != screen.child.pid, "sh leads a process group of its own"
        assert foreground == group, "and that group has the terminal"
        screen.run("exit")
        screen.expect("back in the rescue shell (/bin/sh exited 0)")
        screen.prompt("db failed")
        screen.run("poweroff")
        screen.expect("powering off: every module is being stopped")
        assert screen.finished() == 0
    finally:
        screen.close()
    booted.proc.wait(20)
    booted.finish()
    assert booted.leftovers == []
    assert pids_alive([pid]) == []
    assert "shutting down (rescue shell: poweroff)" in booted.output


@pytest.mark.skipif(os.geteuid() != 0, reason="the password is asked for root only")
def test_the_password_prompt_refuses_a_wrong_one_and_takes_the_right_one(
    tmp_path: Path, boot
) -> None:
    booted = boot(write_plan(tmp_path / "plan", {"cache": 'exec = "sleep 1000"\n'}))
    booted.wait_state("cache", "ready")
    hashed = auth.make_hash("open sesame")
    screen = Screen(booted, PARTENZA_RESCUE_SHADOW=str(shadow(tmp_path, hashed)))
    started = time.monotonic()
    try:
        screen.expect("Password for root:")
        screen.run("open barley")
        screen.expect("Login incorrect (2 tries left)")
        screen.expect("Password for root:")
        screen.run("open sesame")
        screen.expect("Partenza rescue shell: `help` lists the commands.")
        screen.prompt("running")
        assert "open sesame" not in screen.seen and "open barley" not in screen.seen
        screen.run("exit")
        assert screen.finished() == 0
    finally:
        screen.close()
    assert time.monotonic() - started >= auth.FAIL_DELAY
    log = (Path(booted.env["PARTENZA_STATE_DIR"]) / "rescue.log").read_text()
    assert re.search(r"WARNING rescue: wrong password for root on /dev/pts/\d+ ", log)
    assert re.search(r"INFO rescue: root authenticated on /dev/pts/\d+", log)


def boot_on_pty(
    tmp_path: Path, plan: Path, argv: list[str] | None = None, password: str = ""
) -> tuple[pexpect.spawn, dict[str, str], Path]:
    """`partenza boot PLAN` on an 80x24 pty, its rescue shell on the same pty,
    root's password field in the shadow file being `password`."""
    env = partenza_env(tmp_path / "orchestrator", short_dir() / "run")
    env.update(
        TERM="vt100",
        PROMPT_TOOLKIT_NO_CPR="1",
        PARTENZA_RESCUE_SHADOW=str(shadow(tmp_path, password)),
    )
    command = argv or [PARTENZA, "boot", str(plan)]
    child = pexpect.spawn(
        command[0],
        command[1:],
        env=env,
        dimensions=(24, 80),
        encoding="utf-8",
        codec_errors="replace",
        timeout=TIMEOUT,
    )
    return child, env, Path(env["PARTENZA_RUNTIME_DIR"]) / "control.sock"


def test_a_continue_from_elsewhere_gives_the_console_back(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan", {"db": FAILING_DB, "web": WEB, "plan.toml": ALLOW_EMPTY}
    )
    child, env, socket = boot_on_pty(tmp_path, plan)
    try:
        child.expect_exact("rescue (db failed)>")
        with Client(socket, timeout=10) as client:
            client.request("continue")
        child.expect_exact("rescue: the boot was resumed elsewhere (pid ")
        child.expect_exact("the console goes back to the boot (plan is degraded)")
        # The progress lines have the console again.
        with Client(socket, timeout=10) as client:
            client.request("shutdown")
        child.expect_exact("shutting down (shutdown requested")
        child.expect_exact("every module stopped")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        left = kill_marked(env[MARK])
    assert left == []


def test_closing_the_terminal_under_the_rescue_shell_shuts_the_plan_down(
    tmp_path: Path,
) -> None:
    plan = write_plan(
        tmp_path / "plan", {"db": FAILING_DB, "web": WEB, "plan.toml": ALLOW_EMPTY}
    )
    # A shell leads the terminal's session, as in a terminal window: when the
    # terminal closes the kernel signals that shell and the foreground group
    # (the rescue shell), not the orchestrator.
    script = f"'{PARTENZA}' boot '{plan}'; sleep 30"
    child, env, socket = boot_on_pty(tmp_path, plan, ["sh", "-c", script])
    try:
        child.expect_exact("rescue (db failed)>")
        with Client(socket, timeout=10) as client:
            snapshot = client.request("status")
        pids = [snapshot["system"]["pid"]]
        pids += [m["pid"] for m in snapshot["modules"] if m.get("pid")]
        # Close our end of the terminal, as closing the window does.
        child.ptyproc.fileobj.close()
        child.ptyproc.closed = child.closed = True
        deadline = time.monotonic() + 15
        while pids_alive(pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids_alive(pids) == [], "the orchestrator and its modules are gone"
    finally:
        if not child.closed:
            child.close(force=True)
        left = kill_marked(env[MARK])
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
    assert left == []
    log = (tmp_path / "orchestrator" / "state" / "orchestrator.log").read_text()
    assert "console: the terminal hung up while rescue had it" in log
    assert "shutting down: terminal closed" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="the password is asked for root only")
def test_a_refused_console_shell_waits_for_enter_instead_of_looping(
    tmp_path: Path,
) -> None:
    plan = write_plan(tmp_path / "plan", {"db": FAILING_DB, "web": WEB})
    child, env, socket = boot_on_pty(tmp_path, plan, password="!")
    try:
        child.expect_exact("root's password is locked; refused")
        child.expect(r"press Enter\s+on the console for a new one")
        # Nothing comes back by itself.
        waited = child.expect_exact(["PARTENZA RESCUE", pexpect.TIMEOUT], timeout=3)
        assert waited == 1, "the shell did not open again unasked"
        child.send("\r")
        child.expect_exact("PARTENZA RESCUE: db failed and is critical")
        child.expect_exact("root's password is locked; refused")
        child.expect(r"press Enter\s+on the console for a new one")
        with Client(socket, timeout=10) as client:
            client.request("shutdown")
        child.expect_exact("every module stopped")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        left = kill_marked(env[MARK])
    assert left == []
