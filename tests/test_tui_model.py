"""The model behind `partenza top`: snapshot, events, and what it derives."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tui.model import Model, Resync, SequenceGap, short_exit, size
from tui.sampler import Sampler

T0 = 1_700_000_000.0


def record(name: str, **fields: Any) -> dict[str, Any]:
    """A module record as `status` sends it, ready unless told otherwise."""
    base: dict[str, Any] = {
        "name": name,
        "state": "ready",
        "reason": "process started",
        "since": T0 + 1,
        "pid": 1000 + len(name),
        "target": "up",
        "standby": False,
        "restarts": 0,
        "last_exit": None,
        "started_at": T0 + 0.5,
        "ready_at": T0 + 1,
        "description": "",
        "file": f"plan/{name}.toml",
        "critical": False,
        "sidecar": False,
        "provides": [],
        "ready_check": "process started",
        "on_failure": "degrade",
        "deps": [],
        "blocked_by": None,
        "failure": None,
    }
    base.update(fields)
    return base


def dep(kind: str, via: str, module: str | None = "") -> dict[str, Any]:
    return {"kind": kind, "via": via, "module": via if module == "" else module}


def snapshot(*modules: dict[str, Any], seq: int = 10, **system: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "boot": "b1",
        "system": {
            "state": "running",
            "reason": "every module is up",
            "plan": "test",
            "boot_started": T0,
            "boot_took": 2.0,
            "pid": 99,
            "rescue": None,
            "providers": system.pop("providers", {}),
            **system,
        },
        "modules": list(modules),
    }


def state(seq: int, module: str, old: str, new: str, reason: str, **extra: Any) -> dict:
    return {
        "seq": seq,
        "time": T0 + seq,
        "type": "state",
        "module": module,
        "old": old,
        "new": new,
        "reason": reason,
        "pid": extra.pop("pid", None),
        "restarts": extra.pop("restarts", 0),
        **extra,
    }


def test_events_change_modules_and_a_gap_raises() -> None:
    model = Model()
    model.load(snapshot(record("web"), record("db"), seq=5))
    change = model.apply(
        state(6, "db", "ready", "restarting", "exited 1", exit="exited 1")
    )
    assert change.modules == {"db"}
    assert model.modules["db"].state == "restarting"
    assert model.modules["db"].last_exit == "exited 1"
    model.apply(state(7, "db", "restarting", "initializing", "pid 7", pid=7))
    assert model.modules["db"].started_at == T0 + 7
    assert model.modules["db"].pid == 7
    assert model.apply(state(7, "db", "x", "y", "again")).modules == set()
    with pytest.raises(SequenceGap) as gap:
        model.apply(state(9, "db", "initializing", "ready", "ok"))
    assert (gap.value.expected, gap.value.got) == (8, 9)
    assert model.modules["db"].state == "initializing"


def test_blocked_reason_gives_the_chain_to_the_root_cause() -> None:
    model = Model()
    model.load(
        snapshot(
            record("api", deps=[dep("requires", "db")]),
            record("db"),
            record("web", deps=[dep("requires", "api")]),
        )
    )
    model.apply(
        state(11, "db", "ready", "failed", "exited 1 after 4 restarts", stage="running")
    )
    model.apply(state(12, "api", "ready", "blocked", "requires db, which failed"))
    model.apply(state(13, "web", "ready", "blocked", "requires api, which is blocked"))
    chain = model.chain("web")
    assert [str(link) for link in chain] == [
        "web blocked: requires api, which is blocked",
        "api blocked: requires db, which failed",
        "db failed: exited 1 after 4 restarts",
    ]
    assert chain[-1].failure is not None
    assert chain[-1].failure["stage"] == "running"
    assert model.modules["db"].last_exit == "exited 1"
    assert [str(link) for link in model.chain("db")] == [
        "db failed: exited 1 after 4 restarts"
    ]


def test_waiting_module_leads_to_the_dependency_it_waits_for() -> None:
    model = Model()
    model.load(
        snapshot(
            record(
                "api",
                state="inactive",
                reason="waiting for db",
                pid=None,
                deps=[dep("requires", "db")],
            ),
            record("db", state="initializing", reason="pid 5, waiting for tcp"),
        )
    )
    assert [link.module for link in model.chain("api")] == ["api", "db"]


def test_tree_puts_sidecars_under_targets_and_providers_under_capabilities() -> None:
    model = Model()
    model.load(
        snapshot(
            record(
                "front", deps=[dep("sidecar", "proxy"), dep("requires", "http", "web")]
            ),
            record("proxy", sidecar=True),
            record("web", provides=["http"]),
            record("nginx", provides=["http"], standby=True, state="inactive"),
            record("worker", deps=[dep("wants", "cache", None), dep("after", "front")]),
            providers={"http": ["web", "nginx"]},
        )
    )
    roots = model.tree()
    assert [item.name for item in roots] == ["front", "worker"]
    front = roots[0]
    assert [(c.kind, c.name, c.role) for c in front.children] == [
        ("module", "proxy", "sidecar"),
        ("capability", "http", ""),
    ]
    providers = front.children[1].children
    assert [(p.name, p.role) for p in providers] == [("web", ""), ("nginx", "standby")]
    assert [(c.kind, c.name) for c in roots[1].children] == [("absent", "cache")]


def test_failover_moves_the_capability_to_the_next_provider() -> None:
    model = Model()
    model.load(
        snapshot(
            record("front", deps=[dep("requires", "http", "web")]),
            record("web", provides=["http"]),
            record("nginx", provides=["http"], standby=True, state="inactive"),
            providers={"http": ["web", "nginx"]},
        )
    )
    change = model.apply(
        {
            "seq": 11,
            "time": T0 + 11,
            "type": "failover",
            "capability": "http",
            "failed": "web",
            "provider": "nginx",
            "reason": "web failed",
        }
    )
    assert change.structure
    assert model.providers["http"] == ["nginx", "web"]
    assert model.modules["front"].deps[0]["module"] == "nginx"
    assert not model.modules["nginx"].standby
    providers = model.tree()[0].children[0].children
    assert [(p.name, p.role) for p in providers] == [("nginx", ""), ("web", "standby")]


def test_rows_filter_by_name_and_state_and_sort() -> None:
    model = Model()
    model.load(
        snapshot(
            record("web", restarts=3),
            record("db", state="failed", pid=None),
            record("worker", state="restarting", pid=None, restarts=1),
            record("cache", state="stopped", pid=None),
        )
    )
    assert model.rows() == ["cache", "db", "web", "worker"]
    assert model.rows(name_filter="W") == ["web", "worker"]
    assert model.rows(state_filter="trouble") == ["db", "worker"]
    assert model.rows(state_filter="stopped") == ["cache"]
    assert model.rows(sort="state") == ["db", "worker", "cache", "web"]
    assert model.rows(sort="restarts", reverse=True) == ["web", "worker", "cache", "db"]


def test_system_and_bluescreen_events() -> None:
    model = Model()
    model.load(snapshot(record("core", critical=True)))
    model.apply(
        {
            "seq": 11,
            "time": T0,
            "type": "system",
            "old": "running",
            "new": "rescue",
            "reason": "core failed and is critical",
            "plan": "test",
        }
    )
    change = model.apply(
        {
            "seq": 12,
            "time": T0,
            "type": "bluescreen",
            "module": "core",
            "error": "exited 2",
            "logs": ["core: boom"],
            "stage": "running",
        }
    )
    assert change.bluescreen is not None
    assert model.system.state == "rescue"
    assert model.system.rescue == "core"
    assert model.modules["core"].failure["logs"] == ["core: boom"]


def test_timeline_orders_by_start() -> None:
    model = Model()
    model.load(
        snapshot(
            record("b", started_at=T0 + 0.2, ready_at=T0 + 0.5),
            record("a", started_at=T0 + 0.1, ready_at=None, state="initializing"),
            record("c", started_at=None, ready_at=None, state="inactive", pid=None),
        )
    )
    bars = [(b.module, b.started, b.ready) for b in model.timeline()]
    assert bars[0][0] == "a" and bars[0][2] is None
    assert bars[1] == ("b", pytest.approx(0.2), pytest.approx(0.5))
    assert bars[2] == ("c", None, None)


def test_timeline_keeps_the_boot_time_start_of_a_restarted_module() -> None:
    """A `top` opened after a restart still draws the module's boot-time bar."""
    model = Model()
    restarted = record(
        "web",
        started_at=T0 + 40,
        ready_at=T0 + 40.2,
        first_started_at=T0 + 0.1,
        first_ready_at=T0 + 0.3,
        restarts=1,
    )
    model.load(snapshot(restarted))
    [bar] = model.timeline()
    assert (bar.started, bar.ready) == (pytest.approx(0.1), pytest.approx(0.3))


def test_text_helpers() -> None:
    assert short_exit("exited 1") == "exit 1"
    assert short_exit("killed by SIGKILL") == "SIGKILL"
    assert short_exit(None) == "-"
    assert size(512) == "512B"
    assert size(2048) == "2K"
    assert size(12_900_000) == "12.3M"


def test_sampler_reads_this_process() -> None:
    sampler = Sampler()
    pid = os.getpid()
    first = sampler.sample({"me": pid, "gone": 2**22 + 12345})
    assert "gone" not in first
    cpu, rss = first["me"]
    assert cpu is None
    assert rss > 1_000_000
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        sum(range(10_000))
    cpu, _ = sampler.sample({"me": pid})["me"]
    assert cpu is not None and cpu > 10.0


def test_health_modules_added_and_removed_and_a_plan_switch() -> None:
    model = Model()
    model.load(snapshot(record("web", health="unknown"), record("db"), seq=1))
    assert model.modules["web"].health == "check"
    model.apply(
        {
            "seq": 2,
            "time": T0,
            "type": "health",
            "module": "web",
            "health": "passing",
            "detail": "",
        }
    )
    assert model.modules["web"].health == "ok"
    assert model.modules["db"].health == "ok", "without a probe, ready is ok"
    model.apply(
        state(3, "web", "ready", "degraded", "3 failed probes", health="failing")
    )
    assert model.modules["web"].health == "bad"
    change = model.apply(
        {
            "seq": 4,
            "time": T0,
            "type": "added",
            "module": "cache",
            "record": record("cache", state="inactive"),
        }
    )
    assert change.structure and model.modules["cache"].state == "inactive"
    change = model.apply({"seq": 5, "time": T0, "type": "removed", "module": "db"})
    assert change.structure and "db" not in model.modules
    blocked = state(
        6,
        "cache",
        "inactive",
        "blocked",
        "requires web, which is blocked",
        blocked_by="web",
        last_exit="exited 3",
    )
    model.apply(blocked)
    assert model.modules["cache"].blocked_by == "web"
    assert model.modules["cache"].last_exit == "exited 3"
    with pytest.raises(Resync, match="now running the plan minimal"):
        model.apply({"seq": 7, "time": T0, "type": "plan", "plan": "minimal"})
