"""Where `partenza top` gets the system's state and sends its requests.

`Source` is the seam between the app and the control socket: the app asks it
for the `subscribe` stream, for a module's log stream and for single requests.
`SocketSource` speaks to a real orchestrator; tests hand the app a source that
replays a recording, so the screen can be drawn without one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from partenza.client import AsyncClient


class Source(Protocol):
    """The three things the app needs from an orchestrator."""

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """The snapshot `{seq, system, modules}`, then each event, in order.

        Raises:
            ClientError: the orchestrator cannot be reached or refused.
        """
        ...

    def follow_logs(self, module: str, lines: int) -> AsyncIterator[dict[str, Any]]:
        """`{module, lines}` with the recent lines, then each new line."""
        ...

    async def request(self, op: str, **params: Any) -> dict[str, Any]:
        """One request and its result."""
        ...


class SocketSource:
    """A `Source` on the control socket; one connection per stream or request."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        client = await AsyncClient(self.path).connect()
        try:
            async for message in client.stream("subscribe"):
                if "event" in message:
                    yield message["event"]
                elif "ok" not in message:
                    yield message
        finally:
            await client.close()

    async def follow_logs(
        self, module: str, lines: int
    ) -> AsyncIterator[dict[str, Any]]:
        client = await AsyncClient(self.path).connect()
        try:
            async for message in client.stream(
                "logs", module=module, lines=lines, follow=True
            ):
                if "log" in message:
                    yield message["log"]
                elif "dropped" in message:
                    yield {
                        "time": time.time(),
                        "stream": "sys",
                        "text": f"{message['dropped']} lines dropped: this fell behind",
                    }
                elif "ok" not in message:
                    yield message
        finally:
            await client.close()

    async def request(self, op: str, **params: Any) -> dict[str, Any]:
        client = await AsyncClient(self.path).connect()
        try:
            return await client.request(op, **params)
        finally:
            await client.close()
