"""Run a program in a network namespace of its own: `netns MODE [--user U] -- ARGV`.

MODE is `loopback` (only a loopback interface, up) or `none` (no interface up).
As root the namespace is made directly; otherwise inside a user namespace that
maps the caller's uid and gid to themselves, which unprivileged users may make
on most systems. With `--user` (and `--group`) the program runs as that user,
switched to only after the namespace exists. Exit status 126 means the
namespace could not be made; the reason is on stderr.
"""

from __future__ import annotations

import ctypes
import fcntl
import grp
import os
import pwd
import socket
import struct
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
CANNOT = 126


class NamespaceError(Exception):
    """The namespace could not be made."""


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise NamespaceError(os.strerror(ctypes.get_errno()))


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def enter(mode: str) -> None:
    """Move this process into a new network namespace set up for `mode`.

    Raises:
        NamespaceError: the kernel refused.
    """
    if os.geteuid() == 0:
        _unshare(CLONE_NEWNET)
    else:
        uid, gid = os.geteuid(), os.getegid()
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as exc:
            raise NamespaceError(
                f"cannot map the user namespace: {exc.strerror}"
            ) from None
    if mode == "loopback":
        try:
            interface_up("lo")
        except OSError as exc:
            raise NamespaceError(f"cannot bring lo up: {exc.strerror}") from None


def interface_up(name: str) -> bool:
    """Bring a network interface up; whether it was down.

    Raises:
        OSError: the kernel refused.
    """

    def request(flags: int) -> bytes:
        return struct.pack("16sh22x", name.encode(), flags)  # struct ifreq

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock, SIOCGIFFLAGS, request(0))
        flags = struct.unpack_from("16sh", answer)[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(sock, SIOCSIFFLAGS, request(flags | IFF_UP))
    return True


def _become(user: str | None, group: str | None) -> None:
    if user is None and group is None:
        return
    entry = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else (entry.pw_gid if entry else None)
    if entry is not None:
        os.initgroups(entry.pw_name, gid if gid is not None else entry.pw_gid)
    if gid is not None:
        os.setgid(gid)
    if entry is not None:
        os.setuid(entry.pw_uid)


def main(argv: list[str]) -> int:
    if "--" not in argv or not argv or argv[0] not in ("loopback", "none"):
        sys.stderr.write(
            "usage: python -m partenza.netns loopback|none [--user U] [--group G] "
            "-- PROGRAM [ARGS...]\n"
        )
        return 2
    split = argv.index("--")
    options, program = argv[1:split], argv[split + 1 :]
    settings = dict(zip(options[::2], options[1::2], strict=False))
    try:
        enter(argv[0])
    except NamespaceError as exc:
        sys.stderr.write(f"partenza: cannot make a network namespace: {exc}\n")
        return CANNOT
    _become(settings.get("--user"), settings.get("--group"))
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        sys.stderr.write(f"partenza: cannot run {program[0]}: {exc.strerror}\n")
        return 127


def probe() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    import subprocess

    try:
        result = subprocess.run(
            [sys.executable, "-m", "partenza.netns", "none", "--", "true"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    return (
        result.stderr.strip().removeprefix("partenza: ") or f"exit {result.returncode}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
