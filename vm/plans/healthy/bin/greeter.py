"""Say hello over the contract, say ready, then keep the heartbeat going."""

from __future__ import annotations

import time

from partenza.sdk import Module

module = Module()
welcome = module.connect()
module.ready()
module.keep_alive()
module.status("greeting")
print(f"greeter: welcomed as {welcome['module']}, ready", flush=True)
while True:
    time.sleep(3600)
