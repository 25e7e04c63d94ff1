"""The metrics sidecar: samples its target's process tree with psutil.

Every `--every` seconds it adds up CPU use, resident memory, open files,
processes and threads over the target's main process and all its
descendants, sends the figures to the orchestrator (they become `metrics`
events and part of the target's record), and writes them to `--file` in
Prometheus's text format, replaced whole each time.

    # metrics.toml
    exec = "${python} -m partenza.modules.metrics --every 2s --file web.prom"
    sidecar = true
    ready = { kind = "handshake" }
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from partenza.sdk import ContractError, Module
from partenza.units import parse_duration


def sample(pid: int, cache: dict[int, psutil.Process]) -> dict[str, float]:
    """Figures over the process tree of `pid`; `cache` keeps processes between
    calls so CPU percentages are measured over the interval."""
    root = cache.get(pid) or psutil.Process(pid)
    cache[pid] = root
    members = [root]
    try:
        members += root.children(recursive=True)
    except psutil.Error:
        pass
    figures = {
        "cpu": 0.0,
        "rss": 0.0,
        "open_files": 0.0,
        "processes": 0.0,
        "threads": 0.0,
    }
    for member in members:
        process = cache.setdefault(member.pid, member)
        try:
            with process.oneshot():
                figures["cpu"] += process.cpu_percent(None)
                figures["rss"] += process.memory_info().rss
                figures["threads"] += process.num_threads()
                figures["processes"] += 1
                try:
                    figures["open_files"] += process.num_fds()
                except psutil.Error:
                    pass
        except psutil.Error:
            continue
    alive = {member.pid for member in members}
    for old in [p for p in cache if p not in alive]:
        del cache[old]
    figures["cpu"] = round(figures["cpu"], 2)
    return figures


PROMETHEUS = (
    (
        "cpu",
        "partenza_module_cpu_percent",
        "CPU use of the module's processes, percent",
    ),
    (
        "rss",
        "partenza_module_resident_bytes",
        "Resident memory of the module's processes",
    ),
    ("open_files", "partenza_module_open_files", "Open file descriptors of the module"),
    ("processes", "partenza_module_processes", "Processes in the module's tree"),
    ("threads", "partenza_module_threads", "Threads in the module's processes"),
)


def prometheus_text(module: str, figures: dict[str, float]) -> str:
    lines = []
    for key, name, text in PROMETHEUS:
        value = figures.get(key, 0.0)
        lines += [
            f"# HELP {name} {text}.",
            f"# TYPE {name} gauge",
            f'{name}{{module="{module}"}} {value:g}',
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


class Sampler:
    def __init__(self, module: Module, every: float, path: Path | None) -> None:
        self.module = module
        self.every = every
        self.path = path
        self.target: str | None = None
        self.pid: int | None = None
        self.cache: dict[int, psutil.Process] = {}
        self.changed = threading.Event()

    def on_target(self, message: dict[str, Any]) -> None:
        self.target = message.get("module")
        pid = message.get("pid")
        self.pid = pid if isinstance(pid, int) else None
        self.changed.set()

    def run(self) -> None:
        while True:
            self.changed.wait(self.every)
            self.changed.clear()
            pid, target = self.pid, self.target
            if pid is None or target is None:
                continue
            try:
                figures = sample(pid, self.cache)
            except psutil.Error:
                continue
            try:
                self.module.send({"type": "metrics", "target": target, **figures})
            except ContractError:
                return
            if self.path is not None:
                try:
                    write_atomically(self.path, prometheus_text(target, figures))
                except OSError as exc:
                    print(
                        f"metrics: cannot write {self.path}: {exc.strerror}",
                        file=sys.stderr,
                    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="partenza.modules.metrics")
    parser.add_argument("--every", default="2s", help="how often to sample (2s)")
    parser.add_argument("--file", type=Path, help="a Prometheus text file to keep")
    args = parser.parse_args()
    try:
        every = parse_duration(args.every)
    except ValueError as exc:
        parser.error(f"--every: {exc}")
    module = Module(role="metrics")
    sampler = Sampler(module, every, args.file)
    module.on("target", sampler.on_target)
    try:
        module.connect()
    except ContractError as exc:
        print(f"metrics: {exc}", file=sys.stderr, flush=True)
        return 2
    module.ready()
    if args.file is not None:
        args.file.parent.mkdir(parents=True, exist_ok=True)
    sampler.run()
    return 1


if __name__ == "__main__":
    sys.exit(main())
