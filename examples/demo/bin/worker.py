"""Fetches JSON from the demo web server at a steady pace, over the contract.

It says hello to the orchestrator with partenza.sdk, says ready after its
first fetch, sends heartbeats, keeps a status line, and answers validate.
"""

import argparse
import json
import sys
import time
import urllib.request

from partenza.sdk import ContractError, Module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    module = Module()
    module.on_validate(
        lambda: [] if args.every > 0 else [f"--every must be above 0, not {args.every}"]
    )
    try:
        module.connect()
    except ContractError as exc:
        print(f"worker: cannot speak the contract: {exc}", file=sys.stderr)
        sys.exit(2)
    module.keep_alive()
    failures = 0
    fetched = 0
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=2) as response:
                data = json.loads(response.read())
            fetched += 1
            print(
                f"worker: fetched n={data['n']} (server up {data['uptime']}s)",
                flush=True,
            )
            module.status(f"{fetched} fetches, last n={data['n']}")
            if fetched == 1:
                module.ready()
            failures = 0
        except (OSError, ValueError) as exc:
            failures += 1
            print(f"worker: fetch failed ({failures} in a row): {exc}", file=sys.stderr)
            if failures >= 3:
                sys.exit(1)
        time.sleep(args.every)


if __name__ == "__main__":
    main()
