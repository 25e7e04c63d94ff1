"""The logging module: keeps every module's output in one file, in order.

It provides the capability `logging` and speaks the contract with the role
`logger`: the orchestrator sends it each line of output, numbered, and it
writes them to `--file` and acknowledges what it has written. While it is
down the orchestrator's fallback logger keeps the lines; when it is back it
gets the backlog first.

    # logger.toml
    exec = "${python} -m partenza.modules.logger --file all.log"
    provides = ["logging"]
    ready = { kind = "handshake" }
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from partenza.sdk import ContractError, Module

ACK_EVERY = 0.2
"""Seconds between acknowledgements of what has been written."""
STATUS_EVERY = 2.0


class Keeper:
    def __init__(self, module: Module, handle: IO[str]) -> None:
        self.module = module
        self.handle = handle
        self.lock = threading.Lock()
        self.written = 0
        self.last_seq = 0
        self.acked = 0
        self.reported = 0.0

    def on_log(self, message: dict[str, Any]) -> None:
        stamp = float(message.get("time", 0.0))
        clock = time.strftime("%H:%M:%S", time.localtime(stamp))
        line = (
            f"{clock}.{int(stamp % 1 * 1000):03d} {message.get('module')} "
            f"{message.get('stream')} {message.get('text')}\n"
        )
        with self.lock:
            self.handle.write(line)
            self.written += 1
            self.last_seq = max(self.last_seq, int(message.get("seq", 0)))

    def on_backlog(self, message: dict[str, Any]) -> None:
        dropped = message.get("dropped", 0)
        note = f"logger: {message.get('lines', 0)} lines of backlog to come"
        if dropped:
            note += f"; {dropped} lines were dropped past the bound"
        print(note, flush=True)

    def run(self) -> None:
        while True:
            time.sleep(ACK_EVERY)
            with self.lock:
                self.handle.flush()
                seq, written = self.last_seq, self.written
            if seq > self.acked:
                try:
                    self.module.send({"type": "ack", "seq": seq})
                except ContractError:
                    return
                self.acked = seq
                if time.monotonic() - self.reported >= STATUS_EVERY:
                    self.reported = time.monotonic()
                    self.module.status(f"{written} lines kept")


def main() -> int:
    parser = argparse.ArgumentParser(prog="partenza.modules.logger")
    parser.add_argument(
        "--file", type=Path, required=True, help="where to keep the lines"
    )
    args = parser.parse_args()
    args.file.parent.mkdir(parents=True, exist_ok=True)
    with open(args.file, "a", buffering=1 << 16) as handle:
        module = Module(role="logger", capabilities=["logging"])
        keeper = Keeper(module, handle)
        module.on("log", keeper.on_log)
        module.on("backlog", keeper.on_backlog)
        try:
            module.connect()
        except ContractError as exc:
            print(f"logger: {exc}", file=sys.stderr, flush=True)
            return 2
        module.ready()
        keeper.run()
    return 1


if __name__ == "__main__":
    sys.exit(main())
