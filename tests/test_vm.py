"""Partenza as the init of a real VM, watched on its serial console.

qemu boots Debian's kernel under software emulation with the image that
vm/build.py makes, and pexpect reads and types on the serial console (ttyS0,
qemu's stdio). Each step waits a short, explicit time, and every failure shows
the tail of the console. The VM is ended by the guest itself (a power-off or a
reboot, which `-no-reboot` turns into qemu's exit) or, whatever happened, by
SIGKILL at teardown.

The guest is asked to power off or reboot as a person would: the plans'
`vm-button` module listens on the second serial line (SIGTERM or SIGINT to
PID 1), the emulated keyboard gets Ctrl-Alt-Del over QMP, and the rescue and
emergency shells are typed into. The image is built once per test session,
into the cache; a machine without qemu, or without what the image needs,
skips these tests with the reason.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator

import pexpect
import pytest

from tests.conftest import short_dir
from vm import build, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FIRST_LINE = 45.0
"""Seconds from qemu's start to the first line of /init."""
STEP = 20.0
"""Seconds for one step on the console: a boot, a command, a shutdown."""
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")
COLOUR = r"(?:\x1b\[[0-9;]*m)?"
SH_PROMPT = r"/ # "


def tagged(tag: str, text: str) -> str:
    """A pattern for a progress line, `[  OK  ] text`, coloured or not."""
    return rf"\[{COLOUR}{re.escape(tag)}{COLOUR}\] {text}"


OK = "  OK  "
WARN = " WARN "
INFO = " INFO "


class VM:
    """One boot of the VM on a plan, its serial console driven by pexpect."""

    def __init__(self, image: build.Image, plan: str) -> None:
        self.control = short_dir()
        initrd = image.initrd(run.plan_folder(plan))
        command = run.qemu_command(image.kernel, initrd, self.control)
        run.prepare_control(self.control)
        self.started = time.monotonic()
        self.times: dict[str, float] = {}
        self.child = pexpect.spawn(
            command[0],
            command[1:],
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(24, 80),
            timeout=STEP,
        )
        self.transcript: list[str] = []
        self.child.logfile_read = self  # type: ignore[assignment]

    # pexpect writes what it reads here.

    def write(self, text: str) -> None:
        self.transcript.append(text)

    def flush(self) -> None:
        pass

    # Reading the console.

    @property
    def screen(self) -> str:
        """Everything the console showed, without escape sequences."""
        return ANSI.sub("", "".join(self.transcript))

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.screen.splitlines()[-lines:])

    def expect(
        self, pattern: str | type[pexpect.EOF], what: str, timeout: float = STEP
    ) -> str:
        """Wait for `pattern` (a regular expression) on the console; the text
        it matched. `what` names the step, for the time taken and the failure."""
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            ended = "qemu ended" if isinstance(exc, pexpect.EOF) else "timed out"
            raise AssertionError(
                f"{what}: {pattern!r} not seen ({ended} after {timeout:g}s, "
                f"{self.elapsed():.1f}s into the boot); the console's tail:\n"
                f"{self.tail()}"
            ) from None
        self.times[what] = self.elapsed()
        return str(self.child.after)

    def shown(self, pattern: str, what: str) -> None:
        """Assert that the console has shown `pattern` at some point."""
        assert re.search(pattern, "".join(self.transcript)), (
            f"{what}: {pattern!r} never shown; the console's tail:\n{self.tail()}"
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # Acting on it.

    def type(self, line: str) -> None:
        """Type a line and press Enter."""
        self.child.send(line + "\r")

    def press(self, what: str) -> str:
        try:
            return run.press(self.control, what)
        except OSError as exc:
            raise AssertionError(
                f"cannot press {what}: {exc}; the console's tail:\n{self.tail()}"
            ) from None

    def ended(self, what: str, timeout: float = STEP) -> int | None:
        """Wait for qemu to exit; its exit status."""
        self.expect(pexpect.EOF, what, timeout)
        self.child.wait()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(9)
        self.child.close(force=True)
        shutil.rmtree(self.control, ignore_errors=True)

    def clean(self) -> None:
        """No panic, no traceback, no internal error on the console."""
        screen = self.screen
        for bad in ("Kernel panic", "Traceback", "internal error", "Oops"):
            assert bad not in screen, f"{bad!r} on the console:\n{self.tail(60)}"


@pytest.fixture(scope="session")
def image() -> build.Image:
    """The kernel and archives, built into the cache once a session."""
    if shutil.which(run.QEMU) is None:
        pytest.skip(f"{run.QEMU} is not installed (apt-get install qemu-system-x86)")
    started = time.monotonic()
    try:
        built = build.build(build.CACHE)
    except build.Missing as exc:
        pytest.skip(f"the VM cannot be built here: {exc}")
    build.say(f"the VM's image took {time.monotonic() - started:.1f}s")
    return built


@pytest.fixture
def boot(image: build.Image) -> Iterator[Callable[[str], VM]]:
    """Boot a plan (a name under vm/plans/); every qemu is ended at teardown."""
    booted: list[VM] = []

    def start(plan: str) -> VM:
        vm = VM(image, plan)
        booted.append(vm)
        return vm

    yield start
    for vm in booted:
        vm.close()
        build.say("times: " + ", ".join(f"{w} {t:.1f}s" for w, t in vm.times.items()))


def _boot_to_running(vm: VM, plan: str, modules: int) -> None:
    vm.expect(r"init: Python up after [0-9.]+s", "first line of /init", FIRST_LINE)
    vm.expect(rf"Partenza \S+: booting {plan} from /etc/partenza/plan", "boot line")
    vm.expect(
        tagged(OK, rf"{plan}: booted in \S+: {modules} ready"), "running", STEP * 2
    )


def test_the_healthy_plan_boots_to_running_and_powers_off(
    boot: Callable[[str], VM],
) -> None:
    vm = boot("healthy")
    _boot_to_running(vm, "healthy", 4)
    for module in ("httpd", "fetcher", "greeter", "button"):
        vm.shown(tagged(OK, rf"{module}: ready in [0-9.]+s \(pid \d+\)"), module)

    # The power button: SIGTERM to PID 1, an orderly power-off.
    answer = vm.press("poweroff")
    assert answer == "button: poweroff: SIGTERM to PID 1", f"{answer}\n{vm.tail()}"
    vm.expect(tagged(INFO, re.escape("healthy: shutting down (SIGTERM)")), "SIGTERM")
    vm.expect(tagged(OK, "healthy: every module stopped"), "every module stopped")
    vm.expect(r"reboot: Power down", "power-off")
    assert vm.ended("qemu's exit") == 0
    # Stopped in reverse dependency order: the client before its server.
    screen = vm.screen
    assert screen.index("fetcher: stopped") < screen.index("httpd: stopped"), vm.tail()
    assert "FAILED" not in screen, vm.tail()
    vm.clean()


def test_ctrl_alt_del_reboots_in_order(boot: Callable[[str], VM]) -> None:
    vm = boot("healthy")
    _boot_to_running(vm, "healthy", 4)

    # The emulated keyboard's Ctrl-Alt-Del: the kernel sends PID 1 SIGINT.
    vm.press("ctrl-alt-del")
    vm.expect(
        tagged(INFO, re.escape("healthy: shutting down (Ctrl-Alt-Del)")), "SIGINT"
    )
    vm.expect(tagged(OK, "healthy: every module stopped"), "every module stopped")
    vm.expect(r"reboot: Restarting system", "reboot")
    assert vm.ended("qemu's exit") == 0
    screen = vm.screen
    assert screen.index("fetcher: stopped") < screen.index("httpd: stopped"), vm.tail()
    vm.clean()


def _rescue_prompt(vm: VM, what: str) -> None:
    vm.expect(r"rescue \(core failed\)>", what)


def test_a_critical_failure_opens_the_rescue_shell_on_the_serial_console(
    boot: Callable[[str], VM],
) -> None:
    vm = boot("bluescreen")
    vm.expect(r"init: Python up after [0-9.]+s", "first line of /init", FIRST_LINE)
    vm.expect(tagged("FAILED", r"core: exited 3 after 1 restart"), "core fails")
    vm.expect(r"CRITICAL FAILURE: core", "bluescreen event")
    vm.expect(r"PARTENZA RESCUE: core failed and is critical", "bluescreen report")
    vm.expect(r"root has no password in /etc/shadow; allowed", "no password")
    _rescue_prompt(vm, "rescue prompt")

    vm.type("why core")
    vm.expect(r"core failed for good:", "why core")
    vm.expect(r"error:\s+exited 3; start limit spent", "the cause")
    _rescue_prompt(vm, "prompt after why")

    # A shell with job control on ttyS0.
    vm.type("sh")
    vm.expect(r"BusyBox v\S+ .* built-in shell \(ash\)", "busybox sh")
    vm.expect(SH_PROMPT, "sh prompt")
    vm.type("tty")
    vm.expect(r"/dev/ttyS0", "the shell's terminal")
    vm.expect(SH_PROMPT, "sh prompt after tty")
    vm.type("sh -c 'echo sleeping-$((2+3)); exec sleep 30'")
    vm.expect(r"sleeping-5", "a job in the foreground")
    vm.child.send("\x03")
    vm.expect(SH_PROMPT, "Ctrl-C ends it")
    vm.type("echo status-$?")
    vm.expect(r"status-130", "the job died of SIGINT")
    # A process that ignores SIGTERM, left behind for the shutdown to kill.
    vm.type("sh -c 'trap \"\" TERM; exec sleep 1000' &")
    vm.type("jobs")
    vm.expect(r"\[1\]\+\s+Running", "a job in the background")
    vm.type("echo marker-$((6*7))")
    vm.expect(r"marker-42", "echo")
    vm.type("exit")
    vm.expect(r"back in the rescue shell \(/bin/sh exited 0\)", "exit")
    _rescue_prompt(vm, "prompt after sh")
    assert "job control turned off" not in vm.screen, vm.tail()

    # `continue`: the console comes back with the lines held while away.
    vm.type("continue")
    vm.expect(r"resuming the boot: bluescreen is degraded", "continue")
    vm.expect(tagged(INFO, r"partenza: \d+ lines? while the console was away:"), "held")
    # Written while the rescue shell still had the console, so held back.
    vm.expect(
        tagged(WARN, re.escape("bluescreen: degraded (api blocked, core failed)")),
        "a held line",
    )

    # Then the power button.
    answer = vm.press("poweroff")
    assert answer == "button: poweroff: SIGTERM to PID 1", f"{answer}\n{vm.tail()}"
    vm.expect(tagged(INFO, re.escape("bluescreen: shutting down (SIGTERM)")), "stop")
    vm.expect(
        tagged(WARN, r"partenza: 1 process killed with SIGKILL after shutdown"),
        "the leftover killed",
    )
    vm.expect(tagged(OK, "bluescreen: every module stopped"), "every module stopped")
    vm.expect(r"reboot: Power down", "power-off")
    assert vm.ended("qemu's exit") == 0
    vm.clean()


def test_the_rescue_shell_reopens_and_its_poweroff_powers_off(
    boot: Callable[[str], VM],
) -> None:
    vm = boot("bluescreen")
    vm.expect(r"init: Python up after [0-9.]+s", "first line of /init", FIRST_LINE)
    _rescue_prompt(vm, "rescue prompt")

    # Left while the system is still in rescue, Enter opens the shell again.
    vm.type("exit")
    vm.expect(r"the system stays in rescue until `continue`", "exit")
    vm.expect(
        tagged(WARN, r"partenza: the rescue shell exited 0 and core is still down"),
        "the shell ended",
    )
    vm.expect(r"press\s+Enter\s+on\s+the\s+console\s+for\s+a\s+new\s+one", "waiting")
    vm.type("")
    vm.expect(r"PARTENZA RESCUE: core failed and is critical", "the report again")
    _rescue_prompt(vm, "rescue prompt again")

    vm.type("poweroff")
    vm.expect(r"powering off: every module is being stopped", "poweroff")
    vm.expect(
        tagged(INFO, re.escape("bluescreen: shutting down (rescue shell: poweroff)")),
        "shutdown",
    )
    vm.expect(tagged(OK, "bluescreen: every module stopped"), "every module stopped")
    vm.expect(r"reboot: Power down", "power-off")
    assert vm.ended("qemu's exit") == 0
    vm.clean()


def test_a_plan_that_cannot_boot_gets_an_emergency_shell(
    boot: Callable[[str], VM],
) -> None:
    vm = boot("broken")
    vm.expect(r"init: Python up after [0-9.]+s", "first line of /init", FIRST_LINE)
    vm.expect(r"requires 'db', which no\s+module in the plan provides", "the problem")
    vm.expect(
        r"partenza: emergency shell on /dev/ttyS0; exit it to power off", "emergency"
    )
    vm.expect(SH_PROMPT, "sh prompt")
    vm.type("sh -c 'echo sleeping-$((2+3)); exec sleep 30'")
    vm.expect(r"sleeping-5", "a job in the foreground")
    vm.child.send("\x03")
    vm.expect(SH_PROMPT, "Ctrl-C ends it")
    vm.type("echo status-$?")
    vm.expect(r"status-130", "the job died of SIGINT")
    vm.type("exit")
    vm.expect(r"reboot: Power down", "power-off")
    assert vm.ended("qemu's exit") == 0
    vm.clean()
