"""A small HTTP server for the demo plan: /, /health and /data."""

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
COUNT = 0
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global COUNT
        with LOCK:
            COUNT += 1
            n = COUNT
        if self.path == "/health":
            self.reply(200, "text/plain", b"ok\n")
        elif self.path == "/data":
            body = {"n": n, "uptime": round(time.time() - STARTED, 1)}
            self.reply(200, "application/json", json.dumps(body).encode())
        elif self.path == "/":
            self.reply(200, "text/plain", b"Partenza demo web server\n")
        else:
            self.reply(404, "text/plain", b"not found\n")

    def reply(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print("web:", format % args, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8421)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)

    def stop(signum: int, frame: object) -> None:
        print("web: stopping on", signal.Signals(signum).name, flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"web: listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("web: stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
