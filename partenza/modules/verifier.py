"""The handshake verifier: a sidecar that vouches for its target.

Each time its target has passed its own readiness check, the orchestrator
asks the verifier; it looks at the process from outside — its environment in
/proc — and asks the orchestrator whether that process and the token in its
environment are the ones of this start. The target counts as ready only once
the orchestrator has heard it verified. A
process that is not what the orchestrator started (another program that took
its place, a stale token) fails its start, with the reason.

Use it as a sidecar:

    # verify.toml
    exec = "${python} -m partenza.modules.verifier"
    sidecar = true
    ready = { kind = "handshake" }

and `sidecars = ["verify"]` in the target's manifest.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from partenza.sdk import ContractError, Module


def read_environ(pid: int) -> dict[str, str]:
    """A process's environment, from /proc; empty if it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return {
        key.decode(errors="replace"): value.decode(errors="replace")
        for key, value in pairs
    }


class Verifier:
    def __init__(self, module: Module) -> None:
        self.module = module
        self.seen: set[tuple[int, int]] = set()
        self.lock = threading.Lock()

    def on_target(self, message: dict[str, Any]) -> None:
        pid, generation = message.get("pid"), message.get("generation")
        if message.get("state") != "verifying" or not isinstance(pid, int):
            return
        with self.lock:
            if (pid, generation) in self.seen:
                return
            self.seen.add((pid, generation))
        environ = read_environ(pid)
        name = message.get("module")
        if environ.get("PARTENZA_MODULE") != name:
            print(f"verifier: pid {pid} does not say it is {name}", flush=True)
        token = environ.get("PARTENZA_TOKEN", "")
        print(f"verifier: checking {name} (pid {pid})", flush=True)
        self.module.send({"type": "verify", "target": name, "pid": pid, "token": token})

    def on_verified(self, message: dict[str, Any]) -> None:
        target = message.get("target", "its target")
        if message.get("ok"):
            print(f"verifier: {target} verified", flush=True)
            self.module.status(f"{target} verified")
        else:
            print(
                f"verifier: {target} NOT verified: {message.get('reason')}", flush=True
            )
            self.module.status(f"{target} refused: {message.get('reason')}")


def main() -> int:
    module = Module(role="verifier")
    verifier = Verifier(module)
    module.on("target", verifier.on_target)
    module.on("verified", verifier.on_verified)
    try:
        module.connect()
    except ContractError as exc:
        print(f"verifier: {exc}", file=sys.stderr, flush=True)
        return 2
    module.ready()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
