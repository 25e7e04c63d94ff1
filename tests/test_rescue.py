"""The rescue shell's commands through prompt-toolkit pipes, against real orchestrators.

Each shell reads its lines from a pipe (`create_pipe_input`) and draws on a
`DummyOutput`; what the commands print goes to a string. A plan is booted once
per group of tests that can share it: `broken` is left in rescue and only
looked at, `mending` is edited and reloaded in order, `leaving` is resumed and
then rebooted. The password check runs on shadow files written here, with
hashes made by the same crypt(3) the shell uses.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import stat
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from partenza.client import ClientError
from rescue import auth, report, terminal
from rescue.commands import COMMANDS, group_problems
from rescue.shell import RescueCompleter, RescueShell
from tests.conftest import Booted, write_plan

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
FIXED_DB = """
    description = "the database"
    exec = "sleep 1000"
    critical = true
"""
WEB = 'exec = "sleep 1000"\nrequires = ["db"]\n'
CHATTY = (
    'exec = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; '
    'sleep 0.05; done"]\n'
)
SPARE = 'exec = "sleep 1000"\ndescription = "a spare part"\n'


def boot_in_rescue(base: Path, manifests: dict[str, str]) -> Booted:
    """Boot a plan whose critical `db` fails; return once the system is in rescue."""
    plan = write_plan(base / "plan", manifests)
    booted = Booted(plan, base / "orchestrator", [])
    booted.wait_socket()
    booted.wait_for(lambda s: s["system"]["state"] == "rescue", what="rescue")
    return booted


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    """A plan left in rescue: `db` failed, `web` blocked, two others up."""
    booted = boot_in_rescue(
        tmp_path_factory.mktemp("broken"),
        {"db": FAILING_DB, "web": WEB, "chatty": CHATTY, "spare": SPARE},
    )
    booted.wait_state("spare", "ready")
    booted.wait_state("chatty", "ready")
    yield booted
    booted.shutdown(timeout=20)


class Driver:
    """A rescue shell on a pipe: type a line, get what the command printed."""

    def __init__(self, socket: Path, stack: ExitStack, **options: object) -> None:
        self.pipe = stack.enter_context(create_pipe_input())
        self.out = io.StringIO()
        options.setdefault("authenticate", False)
        self.shell = RescueShell(
            socket,
            input=self.pipe,
            output=DummyOutput(),
            stdout=self.out,
            **options,  # type: ignore[arg-type]
        )
        stack.callback(self.shell.close)

    def type(self, text: str) -> tuple[str, int | None]:
        """Send `text` (a line with its newline, or keys) and run one step."""
        start = len(self.out.getvalue())
        self.pipe.send_text(text)
        code = self.shell.step()
        return self.out.getvalue()[start:], code

    def line(self, text: str) -> str:
        """Run one command that keeps the shell open; what it printed."""
        printed, code = self.type(text + "\n")
        assert code is None, f"{text!r} ended the shell with {code}:\n{printed}"
        assert "Traceback" not in printed
        return printed


@pytest.fixture
def shell_on() -> Iterator[Callable[..., Driver]]:
    """Open drivers on a socket; each is closed at teardown."""
    with ExitStack() as stack:

        def open_driver(socket: Path, start: bool = True, **options: object) -> Driver:
            driver = Driver(socket, stack, **options)
            if start:
                driver.shell.start()
            return driver

        yield open_driver


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def editor_script(folder: Path, name: str, content: str) -> Path:
    """An EDITOR that replaces the file it is given last with `content`."""
    source = folder / f"{name}.content"
    source.write_text(textwrap.dedent(content).lstrip())
    script = folder / f"{name}.sh"
    script.write_text(f'#!/bin/sh\nfor last; do :; done\ncat "{source}" > "$last"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


# Looking at a plan in rescue.


def test_status_shows_the_table_and_one_module_in_full(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket)
    table = shell.line("status").splitlines()
    assert table[0].startswith("plan: rescue, up ")
    assert table[1].split() == [
        "MODULE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "REASON",
    ]
    rows = {row.split()[0]: row.split()[1] for row in table[2:]}
    assert rows == {
        "db": "failed",
        "web": "blocked",
        "chatty": "ready",
        "spare": "ready",
    }
    detail = shell.line("status db")
    assert "state: failed (exited 3 after 1 restart; start limit spent" in detail
    assert "failed at: running: exited 3" in detail


def test_why_follows_the_chain_to_the_failure_and_its_output(
    broken: Booted, shell_on
) -> None:
    printed = shell_on(broken.socket).line("why web").splitlines()
    assert printed[0] == "web blocked: requires db, which failed"
    assert printed[1].startswith("  <- db failed: exited 3 after 1 restart")
    assert "db failed for good:" in printed
    assert "  stage:    running (it was started, then ended)" in printed
    assert f"  manifest: {broken.plan / 'db.toml'}" in printed
    assert "  ! db: cannot open /data" in printed


def test_logs_shows_the_last_lines_and_says_what_is_wrong_with_its_arguments(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket)
    lines = shell.line("logs db").splitlines()
    assert any(line.endswith("! db: cannot open /data") for line in lines)
    assert any(line.endswith("| starting db") for line in lines)
    two = shell.line("logs chatty -n 2").splitlines()
    assert len(two) == 2 and all(re.search(r"\| tick \d+$", line) for line in two)
    assert shell.line("logs") == "rescue: logs: usage: logs MODULE [-f] [-n N]\n"
    assert shell.line("logs chatty -n many") == (
        "rescue: logs: -n takes a count, got 'many'; usage: logs MODULE [-f] [-n N]\n"
    )
    assert shell.line("logs chatty -x") == (
        "rescue: logs: unknown option '-x'; usage: logs MODULE [-f] [-n N]\n"
    )
    assert shell.line("logs dbb") == (
        "rescue: logs: unknown module 'dbb' (did you mean 'db'?)\n"
    )
    assert shell.line("logs zzz") == (
        "rescue: logs: unknown module 'zzz' (`status` lists them)\n"
    )


def test_logs_follow_stops_at_ctrl_c_and_the_prompt_comes_back(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket)
    seen_ticks = threading.Event()

    def interrupt_once_following() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = shell.out.getvalue()
            if "(following chatty" in text and text.count("tick") >= 4:
                seen_ticks.set()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = threading.Thread(target=interrupt_once_following)
    interrupter.start()
    try:
        printed = shell.line("logs chatty -f -n 1")
    finally:
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    assert seen_ticks.is_set()
    ticks = [int(n) for n in re.findall(r"\| tick (\d+)", printed)]
    assert len(ticks) >= 4 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    assert printed.rstrip().endswith("(stopped following chatty)")
    assert shell.line("why web").startswith("web blocked")


def test_start_stop_and_restart_wait_and_report(broken: Booted, shell_on) -> None:
    shell = shell_on(broken.socket)
    assert shell.line("stop spare").startswith("spare: stopped (stop requested; ")
    assert broken.module("spare")["pid"] is None
    assert shell.line("start spare").startswith("spare: ready")
    before = broken.module("spare")["pid"]
    assert shell.line("restart spare").startswith("spare: ready")
    after = broken.module("spare")
    assert after["pid"] not in (None, before) and after["restarts"] == 1
    assert shell.line("restart sapre") == (
        "rescue: restart: unknown module 'sapre' (did you mean 'spare'?)\n"
    )
    assert shell.line("stop") == "rescue: stop: usage: stop MODULE\n"


def test_plan_shows_the_start_order_and_the_edges(broken: Booted, shell_on) -> None:
    printed = shell_on(broken.socket).line("plan")
    assert printed.startswith("plan plan: 4 modules, 4 to start in 2 waves")
    assert "    db: the database\n" in printed
    assert "on failure: bluescreen (critical)" in printed
    assert re.search(r"web => db +\[requires\] +web.toml: requires \"db\"", printed)


def test_validate_an_unchanged_plan(broken: Booted, shell_on) -> None:
    assert shell_on(broken.socket).line("validate") == (
        "the plan is valid; it is the one running: nothing would change\n"
    )


def test_help_lists_every_command_with_a_line_each(broken: Booted, shell_on) -> None:
    shell = shell_on(broken.socket)
    lines = shell.line("help").splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ")]
    wanted = "status why logs start stop restart plan validate edit reload"
    wanted += " continue sh reboot poweroff help exit"
    assert listed == wanted.split() == list(COMMANDS)
    assert all(len(line) < 80 for line in lines)
    assert shell.line("help logs") == (
        "usage: logs MODULE [-f] [-n N]\n"
        "  a module's last N (20) lines; -f follows them\n"
    )
    assert shell.line("help stat") == (
        "rescue: help: unknown command 'stat' (did you mean 'start'?)\n"
    )


def test_unknown_commands_and_wrong_arguments_are_explained(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket)
    assert shell.line("stauts") == (
        "rescue: unknown command 'stauts' (did you mean 'status'?)\n"
    )
    assert shell.line("frobnicate") == (
        "rescue: unknown command 'frobnicate' (`help` lists the commands)\n"
    )
    assert shell.line("why") == "rescue: why: usage: why MODULE\n"
    assert shell.line("restart db web") == "rescue: restart: usage: restart MODULE\n"
    assert (
        shell.line("why 'web")
        == "rescue: cannot read that line: No closing quotation\n"
    )
    assert shell.line("") == ""


def test_completion_of_commands_modules_and_options(broken: Booted, shell_on) -> None:
    shell = shell_on(broken.socket)
    completer = shell.shell.session.completer
    assert isinstance(completer, RescueCompleter)

    def complete(text: str) -> list[str]:
        found = completer.get_completions(Document(text), CompleteEvent())
        return [c.text.strip() for c in found]

    assert complete("") == sorted(COMMANDS)
    assert complete("st") == ["start", "status", "stop"]
    assert complete("why ") == ["chatty", "db", "spare", "web"]
    assert complete("restart s") == ["spare"]
    assert complete("logs db -") == ["-f", "-n"]
    assert complete("help rel") == ["reload"]
    assert complete("why web ") == []
    assert complete("nosuch ") == []
    # Through the keys: Tab completes the module's name, Enter runs the line.
    assert shell.line("why w\t").startswith("web blocked: requires db")


def test_history_is_kept_in_a_file_and_recalled(
    broken: Booted, shell_on, tmp_path: Path
) -> None:
    history = tmp_path / "state" / "rescue_history"
    first = shell_on(broken.socket, history=history)
    first.line("why web")
    assert "\n+why web\n" in history.read_text()
    second = shell_on(broken.socket, history=history)
    assert second.line("\x1b[A").startswith("web blocked: requires db")


def test_history_falls_back_to_memory_when_the_file_cannot_be_written(
    broken: Booted, shell_on, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    shell = shell_on(broken.socket, history=blocker / "rescue_history")
    assert shell.out.getvalue().startswith(
        "rescue: history is kept in memory only: cannot write "
    )
    assert shell.line("validate").startswith("the plan is valid")


def test_the_prompt_shows_the_system_state(broken: Booted, shell_on) -> None:
    assert shell_on(broken.socket).shell.prompt_text() == "rescue (db failed)> "


def test_ctrl_c_clears_the_line_and_ctrl_d_leaves_only_outside_the_bluescreen(
    broken: Booted, shell_on
) -> None:
    console = shell_on(broken.socket, bluescreen="db")
    assert console.type("why we\x03") == ("", None)
    printed, code = console.type("\x04")
    assert code is None and "`continue` resumes the boot, `exit` leaves" in printed
    assert console.line("why web").startswith("web blocked")
    printed, code = console.type("exit\n")
    assert code == 0 and "the system stays in rescue until `continue`" in printed
    elsewhere = shell_on(broken.socket)
    assert elsewhere.type("\x04") == ("", 0)


def test_sh_runs_the_shell_and_comes_back(
    broken: Booted, shell_on, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "fake-shell"
    script.write_text(f'#!/bin/sh\necho "$$ $#" > "{marker}"\nexit 7\n')
    script.chmod(0o755)
    monkeypatch.setenv("SHELL", str(script))
    printed = shell_on(broken.socket).line("sh")
    assert printed == (
        f"starting {script}; leave it with `exit` to come back here\n"
        f"back in the rescue shell ({script} exited 7)\n"
    )
    pid, argc = marker.read_text().split()
    assert int(pid) != os.getpid() and argc == "0"


def test_the_bluescreen_fits_80_by_24_and_says_what_failed(broken: Booted) -> None:
    snapshot = broken.request("status")
    record = next(m for m in snapshot["modules"] if m["name"] == "db")
    lines = report.bluescreen(record, snapshot["system"], module="db")
    assert len(lines) <= 23 and all(len(line) <= 79 for line in lines)
    text = "\n".join(lines)
    assert lines[0].startswith(" PARTENZA RESCUE: db failed and is critical")
    for wanted in (
        "  module    db - the database",
        "  state     failed: exited 3 after 1 restart; start limit spent (2 in 10s)",
        "  stage     running (it was started, then ended)",
        "  error     exited 3; start limit spent (2 in 10s)",
        "  blocked   web",
        f"  manifest  {broken.plan / 'db.toml'}",
        "  ! db: cannot open /data",
        "  why db, logs db           what happened    edit db, reload     mend it",
    ):
        assert wanted in text.splitlines(), f"{wanted!r} not in\n{text}"


def test_the_bluescreen_still_fits_with_long_values_and_hostile_output() -> None:
    name = "a-module-with-a-rather-long-name"
    record = {
        "name": name,
        "description": "d" * 200,
        "state": "failed",
        "reason": "because " * 40,
        "path": "/very/deep" * 20 + "/a.toml",
        "failure": {
            "stage": "ready check",
            "error": "error " * 50,
            "exit": "killed by SIGKILL",
            "restarts": 9,
            "time": 1_700_000_000.0,
            "blocks": [f"dependent{i}" for i in range(40)],
            "logs": ["\x1b[2Jwiped\x07 the screen", *(f"line {i}" for i in range(50))],
        },
    }
    system = {"plan": "p", "state": "rescue", "reason": "r" * 300}
    for width, height in ((80, 24), (40, 12), (132, 50)):
        lines = report.bluescreen(
            record, system, module=name, width=width, height=height
        )
        assert len(lines) <= max(height, 12) - 1
        assert all(len(line) <= max(width, 40) - 1 for line in lines), width
        assert not any("\x1b" in line or "\x07" in line for line in lines)
    lines = report.bluescreen(record, system, module=name)
    at = next(i for i, line in enumerate(lines) if line.startswith("  manifest  "))
    assert lines[at].startswith("  manifest  ...") and lines[at + 1][:12] == " " * 12
    shown = lines[at][12:] + lines[at + 1][12:]
    assert len(shown) == 2 * 67 and record["path"].endswith(shown[3:])
    assert "  why MODULE, logs MODULE   what happened" in "\n".join(lines)
    assert any(line.endswith("| line 49") for line in lines)
    assert any("earlier lines not shown" in line for line in lines)


def test_main_draws_the_bluescreen_then_opens_the_shell(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket, start=False, bluescreen="db")
    shell.pipe.send_text("exit\n")
    assert shell.shell.main() == 0
    printed = shell.out.getvalue()
    assert printed.startswith(" PARTENZA RESCUE: db failed and is critical")
    assert "  ! db: cannot open /data\n" in printed
    assert "Partenza rescue shell: `help` lists the commands.\n" in printed
    assert "\x1b[2J" not in printed, "a string is not a terminal to clear"
    # With the password's line, the banner and the prompt, the report's
    # title is still on a 24-line screen.
    banner = printed.splitlines().index(
        "Partenza rescue shell: `help` lists the commands."
    )
    assert banner + 1 + 1 <= 24 - 1


def test_a_bluescreen_for_a_module_the_plan_lacks_is_refused(
    broken: Booted, shell_on
) -> None:
    shell = shell_on(broken.socket, start=False, bluescreen="nosuch")
    assert shell.shell.main() == 1
    assert shell.out.getvalue().startswith("rescue: the plan has no module 'nosuch'")


# Mending a plan: edit, validate, reload. These tests run in order.


@pytest.fixture(scope="module")
def mending(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    booted = boot_in_rescue(
        tmp_path_factory.mktemp("mending"), {"db": FAILING_DB, "web": WEB}
    )
    yield booted
    booted.shutdown(timeout=20)


def test_edit_shows_the_problems_then_what_changes(
    mending: Booted, shell_on, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell = shell_on(mending.socket)
    manifest = mending.plan / "db.toml"
    broken = editor_script(
        tmp_path, "broken", 'exec = "sleep 1"\nrequires = ["disk"]\n'
    )
    monkeypatch.setenv("EDITOR", str(broken))
    printed = shell.line("edit db").splitlines()
    assert printed == [
        f"{manifest}: saved",
        f"{mending.plan}/db.toml:",
        "  requires: db requires 'disk', which no module in the plan provides",
        "the plan has 1 problem: `reload` would refuse it and change nothing",
    ], printed
    fixed = editor_script(tmp_path, "fixed", FIXED_DB)
    monkeypatch.setenv("EDITOR", f"{fixed} --an-argument-it-ignores")
    assert shell.line("edit db").splitlines() == [
        f"{manifest}: saved",
        "the plan is valid; `reload` would change db",
        "`reload` applies it",
    ]
    assert manifest.read_text() == textwrap.dedent(FIXED_DB).lstrip()
    assert shell.line("edit db").splitlines()[0] == f"{manifest}: unchanged"
    assert mending.module("db")["state"] == "failed", "edit alone applies nothing"
    monkeypatch.setenv("EDITOR", "no-such-editor-anywhere")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shell.line("edit db") == (
        "rescue: edit: the editor 'no-such-editor-anywhere' of EDITOR is not "
        "installed; no editor found: set EDITOR, or install vi or nano\n"
    )


def test_reload_refuses_a_broken_plan_file_by_file_then_applies_the_fix(
    mending: Booted, shell_on
) -> None:
    shell = shell_on(mending.socket)
    fixed = (mending.plan / "db.toml").read_text()
    (mending.plan / "db.toml").write_text('exec = "sleep 1"\nrequires = ["disk"]\n')
    (mending.plan / "web.toml").write_text('exec = "sleep 1"\nport = 3\n')
    printed = shell.line("reload").splitlines()
    assert printed[-1].startswith(f"rescue: reload: {mending.plan}: the plan has 2 ")
    assert printed[-1].endswith("nothing was changed (fix them and reload again)")
    groups: dict[str, list[str]] = {}
    file = ""
    for line in printed[:-1]:
        if line.startswith("  "):
            groups[file].append(line)
        else:
            file = line
            groups[file] = []
    assert sorted(groups) == [f"{mending.plan}/db.toml:", f"{mending.plan}/web.toml:"]
    assert groups[f"{mending.plan}/db.toml:"] == [
        "  requires: db requires 'disk', which no module in the plan provides"
    ]
    [problem] = groups[f"{mending.plan}/web.toml:"]
    assert problem.startswith("  port: ")
    assert mending.module("db")["state"] == "failed"
    (mending.plan / "db.toml").write_text(fixed)
    (mending.plan / "web.toml").write_text(WEB)
    assert shell.line("reload") == "reloaded: changed db\n  db: ready\n"
    wait_until(lambda: shell.shell.prompt_text() == "rescue (running)> ")
    assert mending.request("status")["system"]["state"] == "running"


def test_continue_leaves_the_shell_once_mended(mending: Booted, shell_on) -> None:
    printed, code = shell_on(mending.socket).type("continue\n")
    assert code == 0
    assert printed == "resuming the boot: plan is running (every module is up)\n"


# Leaving a plan still broken: the report alone, continue, reboot. In order.


@pytest.fixture(scope="module")
def leaving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    settings = '[rescue]\nshell = false\nempty_password = "allow"\n'
    booted = boot_in_rescue(
        tmp_path_factory.mktemp("leaving"),
        {"db": FAILING_DB, "web": WEB, "plan.toml": settings},
    )
    yield booted
    booted.shutdown(timeout=20)


def test_with_shell_false_the_bluescreen_is_all(leaving: Booted, shell_on) -> None:
    shell = shell_on(leaving.socket, start=False, bluescreen="db")
    assert shell.shell.main() == 0
    printed = shell.out.getvalue()
    assert printed.startswith(" PARTENZA RESCUE: db failed")
    assert printed.endswith(
        "rescue: the plan has [rescue] shell = false: no shell is opened here; "
        "`partenza rescue` opens one from a terminal\n"
    )


def test_continue_resumes_the_boot_degraded(leaving: Booted, shell_on) -> None:
    shell = shell_on(leaving.socket, bluescreen="db")
    assert shell.shell.prompt_text() == "rescue (db failed)> "
    printed, code = shell.type("continue\n")
    system = leaving.request("status")["system"]
    assert system["state"] == "degraded" and system["rescue"] is None
    assert (printed, code) == (
        f"resuming the boot: plan is degraded ({system['reason']})\n",
        0,
    )


def test_reboot_boots_the_plan_again(leaving: Booted, shell_on) -> None:
    """Outside PID 1, a reboot stops every module and boots the plan anew, in
    the same process."""
    before = leaving.request("status")["boot"]
    printed, code = shell_on(leaving.socket).type("reboot\n")
    assert (printed, code) == ("rebooting: every module is being stopped\n", 0)
    wait_until(lambda: leaving.output.count("booting ") == 2, timeout=20)
    wait_until(lambda: _answers_with_another_boot(leaving, before), timeout=20)
    assert leaving.proc.poll() is None
    output = leaving.output
    assert "shutting down (rescue shell: reboot)" in output
    assert output.index("every module stopped") < output.rindex("booting ")
    leaving.shutdown()
    assert leaving.leftovers == []


def _answers_with_another_boot(booted: Booted, before: str) -> bool:
    try:
        return booted.request("status")["boot"] != before
    except ClientError:
        return False


# An orchestrator that goes away.


def test_a_lost_orchestrator_is_said_plainly_and_the_shell_goes_on(
    tmp_path: Path, shell_on
) -> None:
    booted = Booted(write_plan(tmp_path / "plan", {"spare": SPARE}), tmp_path / "o", [])
    try:
        booted.wait_socket()
        booted.wait_state("spare", "ready")
        shell = shell_on(booted.socket)
        assert shell.line("status spare").startswith("    module: spare - ")
        assert shell.shell.prompt_text() == "rescue (running)> "
    finally:
        booted.finish()
    wait_until(lambda: not shell.shell.watcher.reachable)
    assert shell.shell.prompt_text() == "rescue (unreachable)> "
    printed = shell.line("status")
    first, second = printed.splitlines()
    assert first.startswith("rescue: lost the connection to the orchestrator (")
    assert first.endswith("); `sh` and `edit FILE` still work")
    assert second.startswith(
        "rescue: status: the orchestrator is unreachable: no orchestrator answers "
        f"on {booted.socket}: "
    )
    assert second.endswith((": connection refused", ": no such file or directory"))
    assert shell.line("continue").startswith("rescue: continue: the orchestrator is")
    assert shell.line("help logs").startswith("usage: logs MODULE")
    # Another orchestrator on the same socket: the shell follows it.
    runtime = {"PARTENZA_RUNTIME_DIR": str(booted.socket.parent)}
    booted.socket.parent.parent.mkdir(exist_ok=True)
    again = Booted(booted.plan, tmp_path / "again", [], env=runtime)
    try:
        again.wait_socket()
        wait_until(lambda: shell.shell.watcher.connected)
        printed = shell.line("status spare")
        assert printed.startswith("rescue: the orchestrator answers again\n")
        assert "    module: spare - a spare part" in printed
    finally:
        again.shutdown(timeout=20)
        shutil.rmtree(booted.runtime, ignore_errors=True)


def test_without_an_orchestrator_the_shell_opens_all_the_same(
    tmp_path: Path, shell_on
) -> None:
    socket = tmp_path / "nobody.sock"
    shell = shell_on(socket, start=False, bluescreen="db")
    shell.pipe.send_text("exit\n")
    assert shell.shell.main() == 0
    printed = shell.out.getvalue()
    assert (
        "  problem   the orchestrator is unreachable: no orchestrator answers on"
        in (printed)
    )
    assert "rescue: the orchestrator is unreachable: " in printed
    assert "; `sh` and `edit FILE` work without it\n" in printed
    assert shell.shell.prompt_text() == "rescue (unreachable)> "


# The password.


def shadow_with(folder: Path, field: str) -> Path:
    path = folder / "shadow"
    path.write_text(f"daemon:*:19000:0:99999:7:::\nroot:{field}:19000:0:99999:7:::\n")
    return path


def test_a_wrong_password_is_refused_and_the_right_one_accepted(
    tmp_path: Path, shell_on, caplog: pytest.LogCaptureFixture
) -> None:
    shadow = shadow_with(tmp_path, auth.make_hash("right horse"))
    shell = shell_on(tmp_path / "none.sock", start=False, shadow=shadow, fail_delay=0)
    shell.pipe.send_text("battery staple\n")
    typed = threading.Timer(0.3, shell.pipe.send_text, ["right horse\n"])
    typed.start()
    with caplog.at_level("INFO", logger="rescue"):
        assert shell.shell.login("refuse") is True
    typed.join()
    assert shell.out.getvalue() == "Login incorrect (2 tries left)\n"
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(
        r"^rescue: wrong password for root on .+ \(try 1 of 3\)$", messages, re.M
    )
    assert re.search(r"^rescue: root authenticated on ", messages, re.M)


def test_three_wrong_passwords_keep_the_shell_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shadow = shadow_with(tmp_path, auth.make_hash("right"))
    said: list[str] = []
    typed = iter(["wrong", "", "right "])
    with caplog.at_level("WARNING", logger="rescue"):
        allowed = auth.login(
            lambda prompt: next(typed), said.append, shadow=shadow, delay=0
        )
    assert allowed is False
    assert said == [
        "Login incorrect (2 tries left)",
        "Login incorrect (1 try left)",
        "Login incorrect",
        "rescue: 3 wrong passwords; the shell stays closed",
    ]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3


@pytest.mark.parametrize("field", ["", "!", "*", "!$6$salt$locked"])
def test_an_empty_or_locked_password_follows_the_plan(
    tmp_path: Path, field: str
) -> None:
    shadow = shadow_with(tmp_path, field)

    def no_prompt(prompt: str) -> str:
        raise AssertionError("no password may be asked for")

    said: list[str] = []
    assert not auth.login(no_prompt, said.append, shadow=shadow)
    assert said[0].endswith('refused (empty_password = "refuse")')
    said.clear()
    assert auth.login(no_prompt, said.append, shadow=shadow, empty_password="allow")
    assert said[0].endswith('allowed (empty_password = "allow")')


def test_a_missing_or_unreadable_shadow_file_counts_as_no_password(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    assert not auth.login(lambda prompt: "", said.append, shadow=tmp_path / "absent")
    assert not any("cannot read" in line for line in said)
    assert said[0].startswith(f"rescue: root has no password in {tmp_path / 'absent'}")
    said.clear()
    assert not auth.login(lambda prompt: "", said.append, shadow=tmp_path)
    assert said[0] == f"rescue: cannot read {tmp_path}: Is a directory"
    assert said[1].startswith(f"rescue: root has no password in {tmp_path}")


def test_hashes_are_checked_with_crypt() -> None:
    hashed = auth.make_hash("pass word", salt="abcdefgh")
    assert hashed.startswith("$6$abcdefgh$") and len(hashed) > 80
    assert auth.verify("pass word", hashed)
    assert not auth.verify("pass word ", hashed)
    assert not auth.verify("pass word", "!" + hashed)
    assert auth.make_hash("pass word") != auth.make_hash("pass word")


def test_problems_are_grouped_under_their_file() -> None:
    assert group_problems(
        ["a.toml: exec: missing", "a.toml: port: too big", "b.toml: bad", "plain"]
    ) == ["a.toml:", "  exec: missing", "  port: too big", "b.toml:", "  bad", "plain"]


@pytest.mark.parametrize("term", [None, "vt100", "linux", "xterm-256color"])
def test_the_shell_never_asks_for_the_cursor_position(term: str | None) -> None:
    """A serial line would never answer, and no warning may leak instead."""
    env = {} if term is None else {"TERM": term}
    terminal.prepare_environment(env)
    assert env["TERM"] == (term or "vt100")
    assert env["PROMPT_TOOLKIT_NO_CPR"] == "1"


def test_the_report_leaves_room_for_the_prompt_on_24_lines(tmp_path: Path) -> None:
    """Under the report come the password's line, the banner and the prompt:
    on a 24-line console the report's title must not scroll away."""

    class Console24(DummyOutput):
        def get_size(self) -> Size:
            return Size(rows=24, columns=80)

    failure = {
        "stage": "running",
        "error": "exited 3",
        "file": "plan/db.toml",
        "blocks": ["web"],
        "logs": [f"db: line {n}" for n in range(8)],
        "streams": ["err"] * 8,
    }
    record = {
        "name": "db",
        "description": "the database",
        "state": "failed",
        "reason": "exited 3",
        "failure": failure,
        "file": "plan/db.toml",
        "restarts": 2,
        "last_exit": "exited 3",
    }
    system = {"state": "rescue", "reason": "db failed", "plan": "p"}
    out = io.StringIO()
    with create_pipe_input() as pipe:
        shell = RescueShell(
            tmp_path / "none.sock", input=pipe, output=Console24(), stdout=out
        )
        shell.bluescreen = "db"
        shell.show_report({"system": system, "modules": [record]})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(" PARTENZA RESCUE: db failed and is critical")
    assert len(lines) <= 24 - 3
