"""What PID 1 has to do that no other process does.

On a machine that Partenza boots (the kernel's init), it mounts `/proc`,
`/sys`, `/dev` and `/run` where they are missing, opens the console, asks the
kernel to turn Ctrl-Alt-Del into SIGINT, brings up the loopback interface, and
at the end syncs and calls `reboot(2)`. In a container (PID 1 of a PID
namespace other than the machine's) it mounts nothing and, at the end, exits
with a status the caller can read.

| signal      | as PID 1                                            |
| ----------- | --------------------------------------------------- |
| SIGTERM     | an orderly power-off (in a container: exit)         |
| SIGINT      | an orderly reboot (Ctrl-Alt-Del)                    |
| SIGHUP      | reload the plan                                     |
| SIGUSR1     | an orderly halt (what busybox's `halt` sends)       |
| SIGUSR2     | an orderly power-off (what busybox's `poweroff` sends) |
| SIGRTMIN+3  | an orderly halt (systemd's numbering)               |
| SIGRTMIN+4  | an orderly power-off                                |
| SIGRTMIN+5  | an orderly reboot                                   |
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PROC_PID_INIT_INO = 0xEFFFFFFC
"""The inode of the machine's own PID namespace, the same on every kernel."""
LINUX_REBOOT_CMD_CAD_OFF = 0
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
RB_HALT_SYSTEM = 0xCDEF0123
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8

MOUNTS = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
)

ACTIONS: dict[int, tuple[str, str]] = {
    signal.SIGTERM: ("poweroff", "SIGTERM"),
    signal.SIGINT: ("reboot", "Ctrl-Alt-Del"),
    signal.SIGUSR1: ("halt", "SIGUSR1 (halt)"),
    signal.SIGUSR2: ("poweroff", "SIGUSR2 (poweroff)"),
    signal.SIGRTMIN + 3: ("halt", "SIGRTMIN+3 (halt)"),
    signal.SIGRTMIN + 4: ("poweroff", "SIGRTMIN+4 (poweroff)"),
    signal.SIGRTMIN + 5: ("reboot", "SIGRTMIN+5 (reboot)"),
}
"""The signals that end PID 1's run: the action, and how the console names it."""
PID1_SIGNALS = (*ACTIONS, signal.SIGHUP)


def is_pid1() -> bool:
    return os.getpid() == 1


def in_container() -> bool:
    """Whether this process lives in a PID namespace other than the machine's."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO
    except OSError:
        # No /proc yet: only the kernel's own init starts without one.
        return False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_missing() -> list[str]:
    """Mount the kernel's file systems that are not mounted yet; which were."""
    mounted = []
    libc = _libc()
    for source, target, fstype, flags, data in MOUNTS:
        path = Path(target)
        if path.is_mount():
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s: %s", target, exc.strerror)
            continue
        result = libc.mount(
            source.encode(), target.encode(), fstype.encode(), flags, data.encode()
        )
        if result != 0:
            error = os.strerror(ctypes.get_errno())
            log.warning("cannot mount %s on %s: %s", fstype, target, error)
            continue
        mounted.append(target)
    return mounted


def open_console() -> None:
    """Make sure stdin, stdout and stderr are open, on /dev/console if not."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            console = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
            if console != fd:
                os.dup2(console, fd)
                os.close(console)


def loopback_up() -> bool:
    """Bring the loopback interface up, as a machine's init must: nothing else
    does, and every check on 127.0.0.1 needs it. Whether it was down."""
    from partenza.netns import interface_up

    try:
        return interface_up("lo")
    except OSError as exc:
        log.warning("cannot bring up the loopback interface: %s", exc.strerror)
        return False


def console_terminal() -> str | None:
    """The real terminal behind /dev/console (`/dev/ttyS0`), which, unlike
    /dev/console itself, can be a controlling terminal."""
    try:
        active = Path("/sys/class/tty/console/active").read_text().split()
    except OSError:
        return None
    for name in reversed(active):
        path = Path("/dev") / name
        if path.exists():
            return str(path)
    return None


def ctrl_alt_del_signals() -> None:
    """Have the kernel send SIGINT on Ctrl-Alt-Del instead of rebooting at once."""
    if _libc().reboot(LINUX_REBOOT_CMD_CAD_OFF) != 0:
        log.warning(
            "cannot take over Ctrl-Alt-Del: %s", os.strerror(ctypes.get_errno())
        )


def finish(action: str) -> None:
    """Sync, then power off, reboot or halt the machine. Returns only if the
    kernel refused."""
    os.sync()
    how = {"poweroff": RB_POWER_OFF, "reboot": RB_AUTOBOOT}.get(action, RB_HALT_SYSTEM)
    log.info(
        "%s", {"poweroff": "powering off", "reboot": "rebooting"}.get(action, "halting")
    )
    if _libc().reboot(how) != 0:
        log.error("reboot(2) failed: %s", os.strerror(ctypes.get_errno()))


def exit_code(status: object) -> int:
    """An exit status as a shell shows it: the code, or 128 + the signal."""
    code = getattr(status, "code", None)
    number = getattr(status, "signal", None)
    if number is not None:
        return 128 + int(number)
    return int(code) if code is not None else 0
