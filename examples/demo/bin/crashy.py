"""Runs for a random while, then crashes with exit status 1.

It speaks systemd's notify protocol the way a program written for systemd
does, with nothing from Partenza: READY=1 and STATUS= on NOTIFY_SOCKET.
"""

import argparse
import os
import random
import socket
import sys
import time


def sd_notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min", type=float, default=8)
    parser.add_argument("--max", type=float, default=20)
    args = parser.parse_args()
    lifetime = random.Random(os.getpid()).uniform(args.min, args.max)
    print(f"crashy: up, will crash in {lifetime:.1f}s", flush=True)
    sd_notify(f"READY=1\nSTATUS=crashing in {lifetime:.0f}s")
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        left = max(0.0, deadline - time.monotonic())
        sd_notify(f"STATUS=crashing in {left:.0f}s")
        print("crashy: still fine", flush=True)
    print("crashy: simulated crash", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
