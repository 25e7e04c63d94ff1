"""Where Partenza keeps its socket, logs and cache.

- runtime dir (the control socket): `/run/partenza` as root; for a user
  `$XDG_RUNTIME_DIR/partenza`, else `/tmp/partenza-UID`.
- state dir (logs, plan cache): `/var/lib/partenza` as root; for a user
  `$XDG_STATE_HOME/partenza`, else `~/.local/state/partenza`.

`PARTENZA_RUNTIME_DIR` and `PARTENZA_STATE_DIR` override both. The control
socket is `control.sock` in the runtime dir; logs are under `logs/` and the
plan cache under `cache/` in the state dir.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "control.sock"


def runtime_dir() -> Path:
    override = os.environ.get("PARTENZA_RUNTIME_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/partenza")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "partenza"
    return Path(f"/tmp/partenza-{os.getuid()}")


def state_dir() -> Path:
    override = os.environ.get("PARTENZA_STATE_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/lib/partenza")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "partenza"


def socket_path() -> Path:
    return runtime_dir() / SOCKET_NAME


def which(program: str, path: str | None = None) -> str | None:
    """Where `program` is on `path` (PATH by default), as execvp would find it."""
    if "/" in program:
        return program if os.access(program, os.X_OK) else None
    for folder in (
        path if path is not None else os.environ.get("PATH", os.defpath)
    ).split(os.pathsep):
        candidate = os.path.join(folder or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
