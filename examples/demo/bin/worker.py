"""Fetches JSON from the demo web server at a steady pace."""

import argparse
import json
import sys
import time
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    failures = 0
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=2) as response:
                data = json.loads(response.read())
            print(
                f"worker: fetched n={data['n']} (server up {data['uptime']}s)",
                flush=True,
            )
            failures = 0
        except (OSError, ValueError) as exc:
            failures += 1
            print(f"worker: fetch failed ({failures} in a row): {exc}", file=sys.stderr)
            if failures >= 3:
                sys.exit(1)
        time.sleep(args.every)


if __name__ == "__main__":
    main()
