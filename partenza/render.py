"""Text for people: the plan's dry run, status tables, event and log lines.

Standard library only; everything here works on the JSON the control socket
sends, so the CLI and the rescue shell print the same thing.
"""

from __future__ import annotations

import time
from typing import Any

from partenza.units import format_duration


def clock(stamp: float, millis: bool = True) -> str:
    text = time.strftime("%H:%M:%S", time.localtime(stamp))
    return f"{text}.{int(stamp % 1 * 1000):03d}" if millis else text


def _fit(text: str, width: int) -> str:
    if width <= 0 or len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "~"


def uptime(record: dict[str, Any], now: float | None = None) -> str:
    started = record.get("started_at")
    if not started or record.get("pid") is None:
        return "-"
    return format_duration((now or time.time()) - started)


def system_line(system: dict[str, Any], modules: list[dict[str, Any]]) -> str:
    """`demo: running, up 2m13s; 5 modules: 4 ready, 1 restarting`."""
    counts: dict[str, int] = {}
    for record in modules:
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    up = format_duration(time.time() - system["boot_started"])
    return (
        f"{system['plan']}: {system['state']}, up {up}; "
        f"{len(modules)} module{'s' if len(modules) != 1 else ''}: {summary}"
    )


def status_table(snapshot: dict[str, Any], width: int = 80) -> str:
    """The modules as a table that fits `width` columns."""
    modules = snapshot["modules"]
    now = time.time()
    rows = [("MODULE", "STATE", "PID", "UPTIME", "RESTARTS", "REASON")]
    for record in modules:
        rows.append(
            (
                record["name"],
                record["state"],
                str(record["pid"]) if record.get("pid") else "-",
                uptime(record, now),
                str(record.get("restarts", 0)),
                record.get("reason") or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [system_line(snapshot["system"], modules)]
    for row in rows:
        head = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5]))
        room = width - len(head) - 2 if width else 0
        lines.append(f"{head}  {_fit(row[5], room) if width else row[5]}".rstrip())
    return "\n".join(lines)


def module_detail(record: dict[str, Any]) -> str:
    """Everything about one module, a field a line."""
    fields: list[tuple[str, str]] = [
        (
            "module",
            record["name"]
            + (f" - {record['description']}" if record["description"] else ""),
        ),
        (
            "state",
            f"{record['state']} ({record['reason']})"
            if record["reason"]
            else record["state"],
        ),
        (
            "since",
            clock(record["since"], millis=False)
            + f", {format_duration(time.time() - record['since'])} ago",
        ),
        ("pid", str(record["pid"]) if record.get("pid") else "-"),
        ("uptime", uptime(record)),
        ("restarts", str(record.get("restarts", 0))),
        ("last exit", record.get("last_exit") or "-"),
        ("ready when", record["ready_check"]),
        (
            "on failure",
            record["on_failure"] + (" (critical)" if record.get("critical") else ""),
        ),
        ("manifest", record["file"]),
    ]
    if record.get("provides"):
        fields.append(("provides", ", ".join(record["provides"])))
    for dep in record.get("deps", []):
        target = dep["module"] or "absent"
        shown = dep["via"] if dep["via"] == target else f"{dep['via']} -> {target}"
        fields.append((dep["kind"], shown))
    if record.get("standby"):
        fields.append(("standby", "yes: another provider was chosen"))
    failure = record.get("failure")
    if failure:
        fields.append(("failed at", f"{failure['stage']}: {failure['error']}"))
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.rjust(width)}: {value}" for name, value in fields)


def event_line(event: dict[str, Any]) -> str:
    """One event as a greppable line: `12:00:01.250 web INITIALIZING -> READY (...)`."""
    stamp = clock(event["time"])
    kind = event["type"]
    if kind == "state":
        return (
            f"{stamp} {event['module']} {str(event['old']).upper()} -> "
            f"{event['new'].upper()} ({event['reason']})"
        )
    if kind == "system":
        old = str(event["old"]).upper() if event.get("old") else "-"
        return f"{stamp} system {old} -> {event['new'].upper()} ({event['reason']})"
    if kind == "boot":
        return f"{stamp} boot finished in {format_duration(event['took'])}"
    if kind == "bluescreen":
        return f"{stamp} bluescreen {event['module']}: {event.get('error')}"
    if kind == "failover":
        return (
            f"{stamp} failover {event['capability']}: {event['failed']} -> "
            f"{event['provider']} ({event['reason']})"
        )
    details = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("seq", "time", "type")
    )
    return f"{stamp} {kind} {details}"


def log_line(line: dict[str, Any], module: str | None = None) -> str:
    """`12:00:01.250 web| text`, stderr marked `!`, Partenza's notes `*`."""
    mark = {"out": "|", "err": "!", "sys": "*"}.get(line["stream"], "|")
    who = f" {module}" if module else ""
    return f"{clock(line['time'])}{who}{mark} {line['text']}"


def plan_text(plan: Any) -> str:
    """The dry run of a compiled plan: what starts, in which order, and why."""
    lines: list[str] = []
    active = plan.active
    count = len(plan.modules)
    lines.append(
        f"plan {plan.name} ({plan.dir}): {count} module{'s' if count != 1 else ''}, "
        f"{len(active)} to start, {len(plan.standby)} standby"
    )
    if plan.description:
        lines.append(f"  {plan.description}")
    lines.append("")
    lines.append("start order")
    name_width = max((len(n) for n in plan.modules), default=4)
    for index, wave in enumerate(plan.waves, 1):
        lines.append(f"  wave {index}")
        for name in wave:
            spec = plan.modules[name]
            restart = spec.restart
            policy = restart.policy
            if policy != "never":
                policy += (
                    f", {restart.limit} starts in {format_duration(restart.window)}"
                )
            lines.append(
                f"    {name.ljust(name_width)}  ready: {spec.ready.describe()}; "
                f"restart: {policy}; on failure: {spec.on_failure}"
            )
    if plan.standby:
        lines.append("  standby (started only on failover or by hand)")
        for name in plan.standby:
            lines.append(f"    {name}")
    if plan.providers:
        lines.append("")
        lines.append("providers")
        for capability, names in sorted(plan.providers.items()):
            others = f"; then {', '.join(names[1:])}" if len(names) > 1 else ""
            lines.append(
                f"  {capability}: {names[0]} ({plan.choices[capability]}){others}"
            )
    if plan.edges:
        lines.append("")
        lines.append("edges")
        for edge in plan.edges:
            target = edge.dst or "(absent)"
            arrow = "=>" if edge.hard else "->"
            via = f" via {edge.via}" if edge.via not in (edge.dst, None) else ""
            lines.append(
                f"  {edge.src} {arrow} {target}{via}  [{edge.kind}] {edge.why()}"
            )
    if plan.notes:
        lines.append("")
        lines.append("notes")
        for note in plan.notes:
            lines.append(f"  {note}")
    return "\n".join(lines)
