"""The module side of the contract, for module authors. Standard library only.

A module started by Partenza finds what it needs in its environment
(`PARTENZA_SOCKET`, `PARTENZA_MODULE`, `PARTENZA_TOKEN`):

```python
from partenza.sdk import Module

module = Module(capabilities=["http"])
module.on_validate(lambda: [] if config_ok() else ["config.ini: no port"])
module.connect()          # hello, then the welcome (or ContractRefused)
module.ready()
module.keep_alive()       # heartbeats from a thread, as often as welcomed
...
module.status("serving 12 clients")
```

`notify()` speaks systemd's notify protocol instead, for modules whose
readiness is `notify`: `notify("READY=1", "STATUS=listening")`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

API_VERSION = "1.0"


class ContractError(Exception):
    """The contract could not be spoken: no socket, a lost connection."""


class ContractRefused(ContractError):
    """The orchestrator refused the hello; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Module:
    """One module's connection to the orchestrator.

    Args:
        name, token, path: From `PARTENZA_MODULE`, `PARTENZA_TOKEN` and
            `PARTENZA_SOCKET` when left out.
        api: The API version this module speaks; it must be the one in its
            manifest.
        capabilities: What it provides, as its manifest declares.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        token: str | None = None,
        path: str | None = None,
        api: str = API_VERSION,
        capabilities: Iterable[str] = (),
        role: str | None = None,
    ) -> None:
        self.name = name or os.environ.get("PARTENZA_MODULE", "")
        self.token = token or os.environ.get("PARTENZA_TOKEN", "")
        self.path = path or os.environ.get("PARTENZA_SOCKET", "")
        self.api = api
        self.capabilities = list(capabilities)
        self.role = role
        self.welcome: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._validator: Callable[[], list[str]] | None = None
        self._stop = threading.Event()

    def on_validate(self, handler: Callable[[], list[str]]) -> None:
        """Answer the orchestrator's validate requests with `handler()`: a list
        of problems, empty when the configuration is sound. Set before
        `connect()`, so that the hello says this module can validate."""
        self._validator = handler

    def on(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call `handler(message)` for each message of type `kind` the
        orchestrator sends (`target`, `verified`, `log`), from the listening
        thread."""
        self._handlers[kind] = handler

    def send(self, message: dict[str, Any]) -> None:
        """Send any contract message (`verify`, `metrics`, `ack`)."""
        self._send(message)

    def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Say hello and wait for the welcome; return it.

        Raises:
            ContractRefused: the orchestrator said why not.
            ContractError: there is no contract socket, or it hung up.
        """
        if not (self.path and self.name and self.token):
            raise ContractError(
                "PARTENZA_SOCKET, PARTENZA_MODULE and PARTENZA_TOKEN are not all set: "
                "is this module started by Partenza?"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ContractError(f"cannot reach {self.path}: {exc.strerror}") from None
        self._sock = sock
        self._file = sock.makefile("rb")
        self._send(
            {
                "type": "hello",
                "module": self.name,
                "token": self.token,
                "api": self.api,
                "capabilities": self.capabilities,
                "validate": self._validator is not None,
                **({"role": self.role} if self.role else {}),
            }
        )
        answer = self._receive()
        if answer.get("type") == "refused":
            self.close()
            raise ContractRefused(str(answer.get("reason", "no reason given")))
        if answer.get("type") != "welcome":
            self.close()
            raise ContractError(f"expected a welcome, got {answer!r}")
        sock.settimeout(None)
        self.welcome = answer
        threading.Thread(
            target=self._listen, name="partenza-contract", daemon=True
        ).start()
        return answer

    def ready(self) -> None:
        """Say the module is ready (for `ready.kind = "handshake"`)."""
        self._send({"type": "ready"})

    def heartbeat(self) -> None:
        """One sign of life (for `heartbeat.via = "contract"`)."""
        self._send({"type": "heartbeat"})

    def status(self, text: str) -> None:
        """A line of status text, shown by `partenza status` and `top`."""
        self._send({"type": "status", "text": text})

    def keep_alive(self, interval: float | None = None) -> threading.Thread:
        """Send heartbeats from a thread: every `interval` seconds, by default
        a third of the interval the welcome asked for."""
        asked = self.welcome.get("heartbeat")
        every = interval if interval is not None else (asked or 30.0) / 3
        thread = threading.Thread(
            target=self._beat, args=(every,), name="partenza-heartbeat", daemon=True
        )
        thread.start()
        return thread

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.heartbeat()
            except ContractError:
                return

    def _listen(self) -> None:
        """Answer the orchestrator's requests until the connection ends."""
        while not self._stop.is_set():
            try:
                message = self._receive()
            except ContractError:
                return
            kind = message.get("type")
            if kind == "validate":
                self._answer_validate(message.get("id"))
            elif isinstance(kind, str) and kind in self._handlers:
                self._handlers[kind](message)

    def _answer_validate(self, number: Any) -> None:
        try:
            problems = list(self._validator()) if self._validator else []
        except Exception as exc:  # The answer must go back, whatever failed.
            problems = [f"the validate handler failed: {exc!r}"]
        try:
            self._send(
                {
                    "type": "validated",
                    "id": number,
                    "ok": not problems,
                    "problems": problems,
                }
            )
        except ContractError:
            pass

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            raise ContractError("not connected")
        with self._send_lock:
            try:
                self._sock.sendall(json.dumps(message).encode() + b"\n")
            except OSError as exc:
                raise ContractError(
                    f"the orchestrator hung up: {exc.strerror}"
                ) from None

    def _receive(self) -> dict[str, Any]:
        try:
            line = self._file.readline(65536)
        except OSError as exc:
            raise ContractError(f"the orchestrator hung up: {exc}") from None
        if not line:
            raise ContractError("the orchestrator hung up")
        try:
            message = json.loads(line)
        except ValueError:
            raise ContractError(f"not JSON: {line[:60]!r}") from None
        if not isinstance(message, dict):
            raise ContractError(f"not a JSON object: {line[:60]!r}")
        return message


def notify(*assignments: str) -> bool:
    """Send systemd-style notifications (`READY=1`, `STATUS=...`, `WATCHDOG=1`)
    to `NOTIFY_SOCKET`; False when there is none to send them to."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto("\n".join(assignments).encode(), path)
        except OSError:
            return False
    return True
