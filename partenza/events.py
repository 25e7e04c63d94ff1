"""The event bus: every change of the orchestrator's state, in order, numbered.

Listeners are called synchronously, in the orchestrator's loop, in the order
events are published. The console is one listener; every subscriber of the
control socket is another, behind a bounded queue of its own.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Listener = Callable[[Event], None]

HISTORY = 2000
"""Events kept for subscribers that resume from a sequence number."""


class EventBus:
    def __init__(self, history: int = HISTORY) -> None:
        self.seq = 0
        self.boot_id = secrets.token_hex(8)
        """Names this orchestrator's run: sequence numbers start again in the next."""
        self._listeners: list[Listener] = []
        self.history: deque[Event] = deque(maxlen=history)

    def publish(self, kind: str, **fields: Any) -> Event:
        """Number, stamp and deliver one event; returns it."""
        self.seq += 1
        event: Event = {"seq": self.seq, "time": time.time(), "type": kind, **fields}
        self.history.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Deliver every later event to `listener`; returns the unsubscribe call."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def since(self, seq: int) -> list[Event] | None:
        """The events after `seq`, or None when some of them are no longer kept."""
        if seq >= self.seq:
            return []
        if not self.history or self.history[0]["seq"] > seq + 1:
            return None
        return [event for event in self.history if event["seq"] > seq]
