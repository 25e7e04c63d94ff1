"""Run a program on a terminal as its controlling terminal: `ttyexec TTY -- ARGV`.

A console that is not the orchestrator's own controlling terminal (a tty named
in the plan, or the console of a machine Partenza boots as PID 1, where
`/dev/console` can never be one) needs a session that owns it, so that Ctrl-C
and job control work there. This program is started in a new session; it
opens the terminal, takes it as its controlling terminal, puts it on 0, 1 and
2, and executes the program.
"""

from __future__ import annotations

import fcntl
import os
import sys
import termios


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m partenza.ttyexec TTY -- PROGRAM [ARGS...]\n")
        return 2
    path, program = argv[0], argv[2:]
    if os.getsid(0) != os.getpid():
        os.setsid()
    fd = os.open(path, os.O_RDWR)
    # As root the terminal is taken even if another session still holds it.
    fcntl.ioctl(fd, termios.TIOCSCTTY, 1 if os.geteuid() == 0 else 0)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        os.write(2, f"partenza: cannot run {program[0]}: {exc.strerror}\n".encode())
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
