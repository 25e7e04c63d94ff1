"""Which process holds a listening TCP socket.

A tcp readiness check that connects must not let a leftover process on the
port pass for the module. The listening sockets of this network namespace come
from the kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`), asked
for listeners only, so the cost does not grow with the connections the machine
holds. Where that is missing (a kernel without `tcp_diag`, as in a small
initramfs) they come from `/proc/net/tcp`, which lists every socket.

While tcp checks wait, one task per event loop asks the kernel for the
listeners every `TICK` and wakes the checks whose port has one, so a check
learns of its listener within milliseconds without each of them polling.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import weakref
from collections.abc import Collection, Iterable, Sequence

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
TICK = 0.002
"""How often the kernel is asked for listeners while a check waits."""

INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_EQ = 11
FILTER_PORTS = 1000
"""Ports per request: the filter's jumps must fit in 16 bits."""

_HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id."""
_REQUEST = struct.Struct("=BBBBI48x")
"""inet_diag_req_v2: family, protocol, extensions, pad, states, and a zeroed
inet_diag_sockid (ports, addresses, interface, cookie)."""
_ATTRIBUTE = struct.Struct("=HH")
"""nlattr: length, type."""
_OP = struct.Struct("=BBH")
"""inet_diag_bc_op: code, where to go on yes, where on no (or an operand)."""
_SPORT_AT = 4
"""Offset of the big-endian source port in inet_diag_msg."""
_INODE_AT = 68
"""Offset of the socket inode in inet_diag_msg."""


def listening_inodes(port: int) -> set[int]:
    """The inodes of the TCP sockets listening on `port` in this namespace."""
    try:
        return _from_netlink([port]).get(port, set())
    except OSError:
        return _from_proc(port)


def listening(port: int) -> bool | None:
    """Whether something listens on `port` in this namespace; None when the
    kernel's socket diagnostics cannot tell."""
    try:
        return port in _from_netlink([port])
    except OSError:
        return None


async def wait_for_listener(port: int, timeout: float) -> None:
    """Return once something listens on `port`, or after `timeout` seconds.

    Without socket diagnostics it simply sleeps `timeout`."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _Watch()
    await watch.wait(port, timeout)


class _Watch:
    """The listener watch of one event loop."""

    def __init__(self) -> None:
        self.usable = True
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, port: int, timeout: float) -> None:
        if not self.usable:
            await asyncio.sleep(timeout)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(port, []).append(future)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self._waiting.get(port, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiting.pop(port, None)

    async def _run(self) -> None:
        try:
            while self._waiting:
                try:
                    ports = set(_from_netlink(self._waiting))
                except OSError:
                    self.usable = False
                    ports = set(self._waiting)
                for port in ports & set(self._waiting):
                    for future in self._waiting.pop(port):
                        if not future.done():
                            future.set_result(None)
                if not self.usable:
                    return
                await asyncio.sleep(TICK)
        finally:
            self._task = None


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = (
    weakref.WeakKeyDictionary()
)


def listener_belongs(port: int, pids: Iterable[int]) -> bool | None:
    """Whether the socket listening on `port` is held by one of `pids`; None
    when no listener can be seen (another namespace, another host)."""
    inodes = listening_inodes(port)
    if not inodes:
        return None
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                return True
    return False


def _from_netlink(ports: Collection[int]) -> dict[int, set[int]]:
    """Each of `ports` that has listeners, to the listeners' inodes."""
    found: dict[int, set[int]] = {}
    wanted = sorted(set(ports))
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    ) as sock:
        sock.settimeout(1.0)
        sequence = 0
        for start in range(0, len(wanted), FILTER_PORTS):
            chunk = wanted[start : start + FILTER_PORTS]
            for family in (socket.AF_INET, socket.AF_INET6):
                sequence += 1
                _ask(sock, family, sequence, _port_filter(chunk))
                _read_dump(sock, set(chunk), found)
    return found


def _ask(sock: socket.socket, family: int, sequence: int, bytecode: bytes) -> None:
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
    body += _ATTRIBUTE.pack(_ATTRIBUTE.size + len(bytecode), INET_DIAG_REQ_BYTECODE)
    body += bytecode
    flags = NLM_F_REQUEST | NLM_F_DUMP
    sock.send(
        _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, sequence, 0)
        + body
    )


def _port_filter(ports: Sequence[int]) -> bytes:
    """Bytecode the kernel runs on each socket, accepting those whose local port
    is one of `ports`: a test per port, each followed by a jump to the end."""
    code = b""
    for port in reversed(ports):
        test = _OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _OP.pack(0, 0, port)
        if code:
            test += _OP.pack(INET_DIAG_BC_JMP, 4, len(code) + 4)
        code = test + code
    return code


def _read_dump(
    sock: socket.socket, ports: set[int], found: dict[int, set[int]]
) -> None:
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                raise OSError("a malformed netlink reply")
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                if code == 0:
                    return
                raise OSError(-code, os.strerror(-code))
            if kind == SOCK_DIAG_BY_FAMILY:
                message = offset + _HEADER.size
                (sport,) = struct.unpack_from("!H", data, message + _SPORT_AT)
                if sport in ports:
                    (inode,) = struct.unpack_from("=I", data, message + _INODE_AT)
                    found.setdefault(sport, set()).add(inode)
            offset += (length + 3) & ~3


def _from_proc(port: int) -> set[int]:
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = len(fields) > 9 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found
