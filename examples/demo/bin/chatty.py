"""Writes a steady stream of log lines, a few of them to stderr."""

import argparse
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()
    # Output need not be UTF-8: Partenza keeps such bytes and shows them escaped.
    sys.stdout.buffer.write(b"chatty: raw bytes \xff\xfe are kept\n")
    n = 0
    while True:
        n += 1
        if n % 50 == 0:
            print(f"chatty: line {n}: a warning on stderr", file=sys.stderr, flush=True)
        else:
            print(f"chatty: line {n}: all is well", flush=True)
        time.sleep(1 / args.rate)


if __name__ == "__main__":
    main()
