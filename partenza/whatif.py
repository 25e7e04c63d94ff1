"""What if a module fails for good? The consequences, worked out on the plan.

`what_if(plan, name)` follows the same rules as the orchestrator, without
starting anything: the module's `on_failure` strategy, failover to the next
provider of each capability it was chosen for (with the dependents restarted
on the new one), the hard dependents that end up blocked, level after level,
the sidecars that stop with their target, the soft dependents that carry on,
and how the system ends: degraded, shut down, in rescue, or on the fallback
plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from partenza.plan import Plan


@dataclass
class Failover:
    capability: str
    to: str | None
    """The next provider, or None when none is left."""
    restarted: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    module: str
    strategy: str
    failovers: list[Failover] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    """Each blocked module, and what blocks it."""
    stopped: dict[str, str] = field(default_factory=dict)
    """Sidecars stopped because their target no longer runs."""
    unaffected: dict[str, str] = field(default_factory=dict)
    """Soft dependents that carry on without it."""
    ending: str = "degraded"
    """`degraded`, `shutdown`, `rescue` or `fallback`."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def what_if(plan: Plan, name: str) -> Outcome:
    """The consequences of `name` failing for good.

    Raises:
        KeyError: no module of that name is in the plan.
    """
    spec = plan.modules[name]
    providers = {cap: list(names) for cap, names in plan.providers.items()}
    running = set(plan.active)
    failed = {name}
    outcome = Outcome(module=name, strategy=spec.on_failure)

    # Failover: each capability it was chosen for goes to the next provider.
    strategy = spec.on_failure
    if strategy == "failover":
        moved = False
        for capability, names in providers.items():
            if not names or names[0] != name:
                continue
            rest = [n for n in names if n not in failed]
            successor = rest[0] if rest else None
            step = Failover(capability, successor)
            if successor is not None:
                names.remove(successor)
                names.insert(0, successor)
                running.add(successor)
                moved = True
                step.restarted = sorted(
                    edge.src
                    for edge in plan.edges
                    if edge.hard and edge.via == capability and edge.src in running
                )
            outcome.failovers.append(step)
        if not moved:
            strategy = "bluescreen" if spec.critical else "degrade"

    def resolve(via: str) -> str | None:
        if via in plan.modules:
            return via
        names = providers.get(via)
        return names[0] if names else None

    # Blocked: hard dependents whose dependency failed or is blocked, level by level.
    down = set(failed)
    changed = True
    while changed:
        changed = False
        for edge in plan.edges:
            if not edge.hard or edge.src in down or edge.src not in running:
                continue
            target = edge.via if edge.kind == "sidecar" else resolve(edge.via)
            if target in down:
                why = "failed" if target in failed else "is blocked"
                outcome.blocked[edge.src] = f"requires {target}, which {why}"
                down.add(edge.src)
                changed = True

    # Sidecars stop with a target that no longer runs.
    for edge in plan.edges:
        if edge.kind == "sidecar" and edge.src in down and edge.via not in down:
            outcome.stopped[edge.via] = f"its target {edge.src} no longer runs"

    # Soft dependents carry on.
    for edge in plan.edges:
        if edge.hard or edge.src in down or edge.src not in running:
            continue
        if resolve(edge.via) in down:
            outcome.unaffected.setdefault(edge.src, f"{edge.kind} {edge.via}")

    outcome.strategy = strategy
    outcome.ending = {
        "shutdown": "shutdown",
        "bluescreen": "rescue",
        "fallback": "fallback",
    }.get(strategy, "degraded")
    return outcome


def describe(plan: Plan, outcome: Outcome) -> list[str]:
    """The outcome in lines a person reads."""
    spec = plan.modules[outcome.module]
    lines = [f"what if {outcome.module} fails for good (its restarts spent)?"]
    declared = spec.on_failure
    line = f"  {outcome.module}: on_failure = {declared}"
    if spec.critical:
        line += " (critical)"
    lines.append(line)
    for step in outcome.failovers:
        if step.to is None:
            lines.append(f"  {step.capability}: no provider left; it is down")
        else:
            restarted = (
                f"; restarted on it: {', '.join(step.restarted)}"
                if step.restarted
                else ""
            )
            lines.append(
                f"  {step.capability} fails over from {outcome.module} to "
                f"{step.to}{restarted}"
            )
    if declared == "failover" and outcome.strategy != "failover":
        lines.append(f"  nothing to fail over to: it ends as {outcome.strategy} would")
    if outcome.blocked:
        for module, why in outcome.blocked.items():
            lines.append(f"  blocked: {module} ({why})")
    else:
        lines.append("  blocked: nothing")
    for module, why in outcome.stopped.items():
        lines.append(f"  stopped: {module} ({why})")
    for module, why in outcome.unaffected.items():
        lines.append(f"  carries on: {module} ({why})")
    endings = {
        "degraded": "the system goes on degraded",
        "shutdown": "the system shuts down, dependents first",
        "rescue": "the system enters rescue: the bluescreen takes the console",
        "fallback": (
            f"the plan stops in order and the fallback plan boots ({plan.fallback})"
        ),
    }
    lines.append(f"  then {endings[outcome.ending]}")
    return lines
