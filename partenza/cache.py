"""The compiled plan, cached between boots and keyed by a hash of its manifests.

A boot first hashes the plan folder's TOML files (cheap: no parsing). When a
compiled plan with that hash is in the cache, it is loaded as JSON and the
manifests are neither parsed nor validated; otherwise the plan is compiled and
written to the cache for the next boot.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from partenza.plan import Plan, compile_plan, plan_digest

log = logging.getLogger(__name__)

KEEP = 8
"""Cached plans kept per cache folder; older ones are removed."""


def cache_dir(state_dir: Path) -> Path:
    return state_dir / "cache"


def load_plan(
    folder: Path, state_dir: Path, *, use_cache: bool = True
) -> tuple[Plan, bool]:
    """The compiled plan of `folder`, and whether it came from the cache.

    Raises:
        PlanError: the plan does not compile.
    """
    directory = cache_dir(state_dir)
    digest = plan_digest(folder)
    entry = directory / f"plan-{digest}.json"
    if use_cache:
        try:
            plan = Plan.from_json(json.loads(entry.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("plan cache: ignoring unreadable %s: %s", entry, exc)
        else:
            if plan.digest == digest:
                return plan, True
    plan = compile_plan(folder)
    _store(directory, entry, plan)
    return plan, False


def _store(directory: Path, entry: Path, plan: Plan) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_suffix(".tmp")
        temporary.write_text(json.dumps(plan.to_json()))
        os.replace(temporary, entry)
    except OSError as exc:
        log.warning("plan cache: cannot write %s: %s", entry, exc.strerror)
        return
    entries = sorted(directory.glob("plan-*.json"), key=_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
