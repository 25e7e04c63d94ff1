"""The VM's power button: a word on a serial line signals PID 1.

`vm-button /dev/ttyS1` reads the second serial line, which `vm/run.py` joins
to a Unix socket on the host (`python vm/run.py --press poweroff` writes to
it). `poweroff` sends SIGTERM to PID 1 and `reboot` sends SIGINT, which
Partenza as PID 1 takes for an orderly power-off and reboot. Each line gets a
line back, so that the host knows it was heard; other words are ignored, and
said so.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import time

WORDS = {"poweroff": signal.SIGTERM, "reboot": signal.SIGINT}


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/dev/ttyS1"
    # Never this module's controlling terminal: it only listens and answers.
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    modes = termios.tcgetattr(fd)
    modes[3] = (modes[3] | termios.ICANON) & ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSANOW, modes)
    print(f"button: listening on {path} for {' or '.join(WORDS)}", flush=True)
    while True:
        line = os.read(fd, 256)
        if not line:
            time.sleep(0.5)
            continue
        word = line.decode(errors="replace").strip()
        if not word:
            continue
        signum = WORDS.get(word)
        if signum is None:
            answer = f"button: {word!r} means nothing here"
        else:
            answer = f"button: {word}: {signum.name} to PID 1"
        print(answer, flush=True)
        os.write(fd, answer.encode() + b"\n")
        if signum is not None:
            os.kill(1, signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
