"""Runs for a random while, then crashes with exit status 1."""

import argparse
import os
import random
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min", type=float, default=8)
    parser.add_argument("--max", type=float, default=20)
    args = parser.parse_args()
    lifetime = random.Random(os.getpid()).uniform(args.min, args.max)
    print(f"crashy: up, will crash in {lifetime:.1f}s", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        print("crashy: still fine", flush=True)
    print("crashy: simulated crash", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
