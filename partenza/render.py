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


REASON_ROOM = 24
"""Columns kept for the reason when names are long."""


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
    if width:
        # A long name gives way before the reason is squeezed out.
        room_for_name = width - sum(widths[1:]) - 2 * 5 - REASON_ROOM
        cap = max(len("MODULE"), min(widths[0], room_for_name))
        if cap < widths[0]:
            rows = [(_fit(row[0], cap), *row[1:]) for row in rows]
            widths[0] = cap
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
    if record.get("status_text"):
        fields.append(("status", record["status_text"]))
    if record.get("health_check"):
        verdict = record.get("health") or "unknown"
        detail = f": {record['health_detail']}" if record.get("health_detail") else ""
        fields.append(("health", f"{verdict}{detail} ({record['health_check']})"))
    if record.get("heartbeat"):
        last = record.get("last_heartbeat")
        ago = f", the last {format_duration(time.time() - last)} ago" if last else ""
        every = format_duration(record["heartbeat"])
        fields.append(("heartbeat", f"at least every {every}{ago}"))
    if record.get("contract"):
        fields.append(("contract", "welcomed on the contract socket"))
    if record.get("network") not in (None, "host"):
        fields.append(("network", f"{record['network']} (a namespace of its own)"))
    if record.get("unmet"):
        fields.append(("cannot run", record["unmet"]))
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


def plan_text(plan: Any, width: int = 80) -> str:
    """The dry run of a compiled plan: what starts, in which order, and why.

    Lines are wrapped to `width` columns (0: not wrapped). Manifests are named
    by file name: they all sit in the plan's folder, which the header shows.
    """
    import os.path
    import textwrap

    lines: list[str] = []

    def add(text: str, indent: int = 0, hang: int = 2) -> None:
        first, rest = " " * indent, " " * (indent + hang)
        if not width or len(first + text) <= width:
            lines.append(first + text)
            return
        lines.extend(
            textwrap.wrap(
                text,
                width,
                initial_indent=first,
                subsequent_indent=rest,
                break_on_hyphens=False,
            )
        )

    def plural(count: int, word: str) -> str:
        return f"{count} {word}{'s' if count != 1 else ''}"

    def local(file: str) -> str:
        return os.path.basename(file)

    active = plan.active
    add(
        f"plan {plan.name}: {plural(len(plan.modules), 'module')}, "
        f"{len(active)} to start in {plural(len(plan.waves), 'wave')}, "
        f"{len(plan.standby)} standby"
    )
    if plan.description:
        add(plan.description, 2)
    add(f"folder: {plan.dir}", 2)

    sidecar_of = {e.dst: e.src for e in plan.edges if e.kind == "sidecar"}
    lines.append("")
    lines.append("start order")
    for index, wave in enumerate(plan.waves, 1):
        add(f"wave {index}", 2)
        for name in wave:
            spec = plan.modules[name]
            title = name
            if name in sidecar_of:
                title += f" (sidecar of {sidecar_of[name]})"
            add(f"{title}: {spec.description}" if spec.description else title, 4)
            add(f"ready when: {spec.ready.describe()}", 6)
            if spec.health is not None:
                health = spec.health
                add(
                    f"health: {health.describe()} every "
                    f"{format_duration(health.interval)}; degraded after "
                    f"{plural(health.threshold, 'failure')}",
                    6,
                )
            if spec.heartbeat is not None:
                heartbeat = spec.heartbeat
                add(
                    f"heartbeat: every {format_duration(heartbeat.interval)} "
                    f"at most ({heartbeat.via})",
                    6,
                )
            if spec.network != "host" or spec.root or spec.user:
                needs = [f"network {spec.network}"] if spec.network != "host" else []
                needs += ["root"] if spec.root else []
                needs += [f"user {spec.user}"] if spec.user else []
                add(f"needs: {', '.join(needs)}", 6)
            restart = spec.restart
            policy = restart.policy
            if policy != "never":
                policy += (
                    f", {plural(restart.limit, 'start')} in "
                    f"{format_duration(restart.window)}"
                )
            failure = spec.on_failure + (" (critical)" if spec.critical else "")
            add(f"restart: {policy}; on failure: {failure}", 6)

    if plan.standby:
        lines.append("")
        lines.append("standby: started only on failover or by hand")
        for name in plan.standby:
            spec = plan.modules[name]
            if spec.provides:
                add(f"{name}: provides {', '.join(spec.provides)}", 2)
            elif spec.sidecar:
                add(f"{name}: a sidecar that no module names", 2)
            else:
                add(name, 2)

    if plan.providers:
        lines.append("")
        lines.append("providers: the first one is chosen")
        for capability, names in sorted(plan.providers.items()):
            others = f"; then {', '.join(names[1:])}" if len(names) > 1 else ""
            add(f"{capability}: {names[0]} ({plan.choices[capability]}){others}", 2)

    if plan.edges:
        lines.append("")
        lines.append("edges: => must be ready first, -> soft or ordering only")
        heads = [
            f"{e.src} {'=>' if e.hard else '->'} {e.dst or '(absent)'}"
            for e in plan.edges
        ]
        kinds = [f"[{e.kind}{' healthy' if e.healthy else ''}]" for e in plan.edges]
        head_width = max(len(head) for head in heads)
        kind_width = max(len(kind) for kind in kinds)
        for edge, head, kind in zip(plan.edges, heads, kinds, strict=True):
            field_name = "sidecars" if edge.kind == "sidecar" else edge.kind
            if edge.healthy:
                field_name = "requires_healthy"
            add(
                f"{head.ljust(head_width)}  {kind.ljust(kind_width)}  "
                f'{local(edge.file)}: {field_name} "{edge.via}"',
                2,
                4,
            )

    if plan.notes:
        lines.append("")
        lines.append("notes")
        for note in plan.notes:
            where = local(note.file) + (f": {note.field}" if note.field else "")
            add(f"{where}: {note.message}", 2)
    return "\n".join(lines)


def failure_output(failure: dict[str, Any]) -> list[tuple[str, str]]:
    """The last lines a failed module wrote, each with the mark `logs` gives
    it: `|` for standard output, `!` for standard error."""
    texts = failure.get("logs") or []
    streams = failure.get("streams") or []
    return [
        ("!" if index < len(streams) and streams[index] == "err" else "|", text)
        for index, text in enumerate(texts)
    ]
