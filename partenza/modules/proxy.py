"""The HTTP proxy: a sidecar that exposes its target's port and rate-limits it.

It listens on `--listen HOST:PORT`, and passes each HTTP request on to
`--to http://HOST:PORT` while a token bucket (`--rate` requests a second,
`--burst` at once) allows; past that it answers 429 Too Many Requests with a
Retry-After. One request a connection (`Connection: close`), which is what a
rate limiter in front of a service needs.

    # proxy.toml
    exec = ["${python}", "-m", "partenza.modules.proxy",
            "--listen", "127.0.0.1:8080", "--to", "http://127.0.0.1:8081",
            "--rate", "20"]
    sidecar = true
    ready = { kind = "tcp", port = 8080 }
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import urllib.parse

from partenza.sdk import ContractError, Module

MAX_HEAD = 64 * 1024


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 if a request may pass now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Proxy:
    def __init__(self, upstream: tuple[str, int], bucket: Bucket) -> None:
        self.upstream = upstream
        self.bucket = bucket
        self.passed = 0
        self.limited = 0
        self.module: Module | None = None

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            writer.close()
            return
        wait = self.bucket.take()
        if wait:
            self.limited += 1
            retry = max(1, int(wait + 0.999))
            body = b"too many requests\n"
            writer.write(
                b"HTTP/1.0 429 Too Many Requests\r\n"
                + f"Retry-After: {retry}\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            await _finish(writer)
            self._report()
            return
        self.passed += 1
        body = b""
        length = _content_length(head)
        if length:
            body = await reader.readexactly(length)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            message = f"the target does not answer: {exc.strerror}\n".encode()
            writer.write(
                b"HTTP/1.0 502 Bad Gateway\r\n"
                + f"Content-Length: {len(message)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + message
            )
            await _finish(writer)
            return
        up_writer.write(_closing(head) + body)
        await up_writer.drain()
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        up_writer.close()
        await _finish(writer)
        self._report()

    def _report(self) -> None:
        if self.module is not None and (self.passed + self.limited) % 10 == 1:
            with contextlib.suppress(ContractError):
                self.module.status(f"{self.passed} passed, {self.limited} limited")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


def _closing(head: bytes) -> bytes:
    """The request head with `Connection: close`, one request a connection."""
    lines = [
        line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


async def _finish(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def run(args: argparse.Namespace) -> None:
    target = urllib.parse.urlsplit(args.to)
    proxy = Proxy(
        (target.hostname or "127.0.0.1", target.port or 80),
        Bucket(args.rate, args.burst),
    )
    host, port = _address(args.listen)
    server = await asyncio.start_server(proxy.serve, host, port, limit=MAX_HEAD)
    print(
        f"proxy: {host}:{port} -> {args.to}, {args.rate:g} requests/s, "
        f"burst {args.burst}",
        flush=True,
    )
    if os.environ.get("PARTENZA_SOCKET"):
        module = Module(role="proxy")
        try:
            module.connect()
            module.ready()
            proxy.module = module
        except ContractError as exc:
            print(f"proxy: without the contract: {exc}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(prog="partenza.modules.proxy")
    parser.add_argument("--listen", required=True, help="HOST:PORT to expose")
    parser.add_argument("--to", required=True, help="the target, http://HOST:PORT")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second")
    parser.add_argument("--burst", type=int, default=None, help="requests at once")
    args = parser.parse_args()
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    args.burst = args.burst or max(1, int(args.rate))
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
