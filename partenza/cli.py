"""`partenza ...`: the command line.

Exit codes (also in `docs/cli.md`):

| code | meaning                                                        |
| ---- | -------------------------------------------------------------- |
| 0    | done                                                           |
| 1    | it did not work: the plan is invalid, a module failed or is    |
|      | blocked, a request was refused, or a boot ended by a failure   |
| 2    | the command line itself is wrong                               |
| 3    | no orchestrator answers on the control socket                  |

Commands that only talk to the socket import nothing heavy, so `partenza
status` answers in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"argument COMMAND: invalid choice: '([^']*)'", message)
        if unknown:
            from partenza.errors import did_you_mean

            word = unknown.group(1)
            guess = did_you_mean(word, [name for name, *_ in COMMANDS])
            hint = f"did you mean {guess!r}?" if guess else f"see `{self.prog} --help`"
            sys.stderr.write(f"partenza: unknown command {word!r} ({hint})\n")
        else:
            sys.stderr.write(f"partenza: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def _fail(message: str, hint: str | None = None, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"partenza: {message}{f' ({hint})' if hint else ''}\n")
    return code


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    from partenza.paths import socket_path

    return socket_path()


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from partenza.paths import state_dir

    return state_dir()


def _client(args: argparse.Namespace, timeout: float | None = 30.0) -> Any:
    from partenza.client import Client

    return Client(_socket(args), timeout=timeout)


# Commands that read a plan folder.


def cmd_boot(args: argparse.Namespace) -> int:
    # The orchestrator speaks no TLS: keep asyncio from loading ssl and
    # libcrypto into a process that lives as long as the system.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from partenza.boot import boot

    return boot(
        Path(args.plan),
        state_dir=_state_dir(args),
        socket=_socket(args),
        use_cache=not args.no_cache,
        as_pid1=True if args.pid1 else None,
    )


def _compile(args: argparse.Namespace, use_cache: bool) -> Any:
    from partenza.errors import PlanError

    try:
        if use_cache:
            from partenza.cache import load_plan

            plan, _ = load_plan(Path(args.plan), _state_dir(args), use_cache=True)
        else:
            from partenza.plan import compile_plan

            plan = compile_plan(Path(args.plan))
    except PlanError as exc:
        from partenza.units import plural

        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        count = len(exc.problems)
        if args.command == "validate":
            count += _report_unmet(exc.modules.values())
        _fail(
            f"{args.plan}: the plan has {plural(count, 'problem')}",
            "fix them and run `partenza validate` again",
        )
        return None
    return plan


def cmd_validate(args: argparse.Namespace) -> int:
    from partenza.units import plural

    plan = _compile(args, use_cache=False)
    if plan is None:
        return EXIT_FAILED
    for note in plan.notes:
        print(f"note: {note}")
    unmet = _report_unmet(plan.modules.values())
    failed = _run_checks(plan)
    if unmet or failed:
        problems = unmet + failed
        return _fail(
            f"{args.plan}: the plan has {plural(problems, 'problem')}",
            "fix them and run `partenza validate` again",
        )
    count = len(plan.modules)
    print(
        f"{args.plan}: plan {plan.name} is valid: {plural(count, 'module')}, "
        f"{len(plan.active)} to start in {plural(len(plan.waves), 'wave')}"
    )
    return EXIT_OK


def _report_unmet(specs: Iterable[Any]) -> int:
    """Say what this machine cannot give the modules as their manifests ask;
    how many such problems there are."""
    from partenza.plan import unmet_requirements

    specs = list(specs)
    netns: str | None = None
    if any(spec.network != "host" for spec in specs):
        from partenza.netns import probe

        netns = probe()
    count = 0
    for spec in specs:
        for reason in unmet_requirements(spec, euid=os.geteuid(), netns=netns):
            field = "root" if reason.startswith("needs root") else "requirements"
            sys.stderr.write(f"{spec.file}: {field}: {spec.name} {reason}\n")
            count += 1
    return count


def _run_checks(plan: Any) -> int:
    """Run every module's configuration check; how many failed."""
    import shlex
    import subprocess

    from partenza.units import format_duration

    failed = 0
    for spec in plan.modules.values():
        if not spec.check:
            continue
        command = shlex.join(spec.check)
        env = dict(os.environ)
        env.update(spec.env)
        try:
            result = subprocess.run(
                spec.check,
                env=env,
                cwd=spec.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=spec.check_timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            output, how = (
                exc.output or b"",
                (f"killed after {format_duration(spec.check_timeout)}"),
            )
        except OSError as exc:
            output, how = b"", f"cannot run: {exc.strerror}"
        else:
            output = result.stdout
            how = "passed" if result.returncode == 0 else f"exited {result.returncode}"
        if how == "passed":
            print(f"{spec.name}: check `{command}` passed")
            continue
        failed += 1
        sys.stderr.write(f"{spec.file}: check: {spec.name}: `{command}` {how}\n")
        for line in output.decode("utf-8", "backslashreplace").splitlines()[-20:]:
            sys.stderr.write(f"    | {line}\n")
    return failed


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _compile(args, use_cache=not args.no_cache)
    if plan is None:
        return EXIT_FAILED
    if args.fail:
        return _what_if(args, plan)
    if args.json:
        import json

        print(json.dumps(plan.to_json(), indent=2))
        return EXIT_OK
    from partenza.render import plan_text

    print(plan_text(plan, _columns() or 80))
    return EXIT_OK


# Commands that talk to a running orchestrator.


def _what_if(args: argparse.Namespace, plan: Any) -> int:
    from partenza.errors import did_you_mean
    from partenza.whatif import describe, what_if

    if args.fail not in plan.modules:
        guess = did_you_mean(args.fail, plan.modules)
        return _fail(
            f"no module {args.fail!r} in the plan",
            f"did you mean {guess!r}?" if guess else "`partenza plan` lists them",
        )
    outcome = what_if(plan, args.fail)
    if args.json:
        return _print_json(outcome.to_json())
    print("\n".join(describe(plan, outcome)))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from partenza import render

    with _client(args) as client:
        if args.module:
            result = client.request("status", module=args.module)
            if args.json:
                return _print_json(result)
            print(render.module_detail(result["module"]))
            return EXIT_OK
        result = client.request("status")
    if args.json:
        return _print_json(result)
    width = _columns()
    print(render.status_table(result, width))
    return EXIT_OK


def cmd_why(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.request("why", module=args.module)
    for depth, reason in enumerate(result["chain"]):
        print(("  " * depth) + ("<- " if depth else "") + reason)
    if result.get("stays_down"):
        print(f"it stays down until started: partenza start {result['module']}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from partenza import render

    if args.lines < 0:
        return _fail(
            f"-n takes a count of 0 or more, got {args.lines}", code=EXIT_USAGE
        )
    with _client(args, timeout=None if args.follow else 30.0) as client:
        messages = client.stream(
            "logs", module=args.module, lines=args.lines, follow=args.follow
        )
        result = next(messages)
        for line in result["lines"]:
            print(render.log_line(line))
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        try:
            for message in messages:
                if "log" in message:
                    print(render.log_line(message["log"]), flush=True)
                elif "dropped" in message:
                    count = message["dropped"]
                    sys.stderr.write(
                        f"partenza: {count} lines dropped: this was too slow\n"
                    )
        except KeyboardInterrupt:
            return EXIT_OK
    return _gone(f"logs {args.module}")


def _control(args: argparse.Namespace, op: str) -> int:
    with _client(args, timeout=None) as client:
        result = client.request(op, module=args.module, wait=not args.no_wait)
    record = result["module"]
    if args.no_wait:
        print(f"{record['name']}: {op} requested ({record['state']})")
        return EXIT_OK
    print(f"{record['name']}: {record['state']} ({record['reason']})")
    if not result.get("settled"):
        return _fail(
            f"{record['name']} did not settle in time",
            f"see `partenza logs {record['name']}`",
        )
    if op in ("start", "restart") and record["state"] in ("failed", "blocked"):
        why = (
            f"`partenza why {record['name']}`" if record["state"] == "blocked" else None
        )
        return _fail(
            f"{record['name']} is {record['state']}",
            why or f"see `partenza logs {record['name']}`",
        )
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    return _control(args, "start")


def cmd_stop(args: argparse.Namespace) -> int:
    return _control(args, "stop")


def cmd_restart(args: argparse.Namespace) -> int:
    return _control(args, "restart")


def cmd_shutdown(args: argparse.Namespace) -> int:
    from partenza.client import ClientError

    with _client(args, timeout=None) as client:
        client.request("shutdown", reason="partenza shutdown")
        if args.no_wait:
            print("shutdown requested")
            return EXIT_OK
        # The orchestrator closes every connection once the last module stopped.
        try:
            for _ in client.stream("subscribe"):
                pass
        except ClientError:
            pass
    print("shutdown finished")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    from partenza.client import ClientError

    with _client(args, timeout=120.0) as client:
        try:
            result = client.request("reload")
        except ClientError as exc:
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
            raise
    changes = result["changes"]
    for note in result.get("notes", []):
        print(f"note: {note}")
    words = [f"{kind} {', '.join(names)}" for kind, names in changes.items() if names]
    print("reloaded: " + ("; ".join(words) if words else "nothing changed"))
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    from partenza import render

    with _client(args, timeout=None) as client:
        messages = client.stream("subscribe")
        snapshot = next(messages)
        if args.json:
            import json

            print(json.dumps({"snapshot": snapshot}), flush=True)
        else:
            print(render.status_table(snapshot, _columns()), flush=True)
        try:
            for message in messages:
                event = message.get("event")
                if event is None:
                    continue
                if args.json:
                    import json

                    print(json.dumps(event), flush=True)
                else:
                    print(render.event_line(event), flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
    return _gone("events")


def _gone(command: str) -> int:
    """A followed stream ended: the orchestrator went away."""
    return _fail(
        f"{command}: the orchestrator closed the connection",
        "it shut down or was stopped; nothing more to follow",
        EXIT_NOT_RUNNING,
    )


def cmd_rescue(args: argparse.Namespace) -> int:
    # prompt-toolkit is imported only here: the boot path never loads it.
    from rescue.shell import run

    return run(_socket(args), bluescreen=args.bluescreen, state_dir=_state_dir(args))


def cmd_top(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _fail(
            "partenza top needs a terminal",
            "`partenza status` or `events` otherwise",
            EXIT_USAGE,
        )
    # Textual is imported only here: the boot path never loads it.
    from tui.app import run

    return run(_socket(args))


def _print_json(result: Any) -> int:
    import json

    print(json.dumps(result, indent=2))
    return EXIT_OK


def _columns() -> int:
    """The terminal's width (COLUMNS first, as programs do); 0 for a pipe."""
    if not sys.stdout.isatty():
        return 0
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _boot_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("plan", metavar="PLAN", help="the plan folder")
    sub.add_argument("--no-cache", action="store_true", help="compile the plan afresh")
    sub.add_argument(
        "--pid1",
        action="store_true",
        help="do PID 1's duties (the default when this process is PID 1)",
    )


def _plan_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("plan", metavar="PLAN")
    sub.add_argument("--json", action="store_true", help="the compiled plan as JSON")
    sub.add_argument("--no-cache", action="store_true", help="compile the plan afresh")
    sub.add_argument(
        "--fail",
        metavar="MODULE",
        help="what if MODULE failed for good: what is blocked, what fails over",
    )


def _status_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("module", metavar="MODULE", nargs="?")
    sub.add_argument("--json", action="store_true")


def _logs_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("module", metavar="MODULE")
    sub.add_argument("-n", "--lines", type=int, default=50, help="how many lines (50)")
    sub.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines"
    )


def _control_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("module", metavar="MODULE")
    sub.add_argument("--no-wait", action="store_true", help="return without waiting")


def _no_wait(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--no-wait", action="store_true", help="return without waiting")


def _rescue_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--bluescreen",
        metavar="MODULE",
        help="first show the failure report of MODULE, as on the console",
    )


def _json(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="one JSON object a line")


def _one_plan(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("plan", metavar="PLAN")


def _one_module(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("module", metavar="MODULE")


def _nothing(sub: argparse.ArgumentParser) -> None:
    pass


COMMANDS: tuple[tuple[str, Any, str, Any], ...] = (
    (
        "boot",
        cmd_boot,
        "boot a plan and supervise it on this terminal",
        _boot_arguments,
    ),
    ("validate", cmd_validate, "check a plan; list every problem", _one_plan),
    (
        "plan",
        cmd_plan,
        "dry run: what would start, in which order, and why",
        _plan_arguments,
    ),
    (
        "status",
        cmd_status,
        "the system and its modules, or one module",
        _status_arguments,
    ),
    (
        "why",
        cmd_why,
        "why a module is in its state, down to the root cause",
        _one_module,
    ),
    ("logs", cmd_logs, "a module's recent output", _logs_arguments),
    ("start", cmd_start, "start a module (and what it requires)", _control_arguments),
    ("stop", cmd_stop, "stop a module (and what requires it)", _control_arguments),
    ("restart", cmd_restart, "stop a module and start it again", _control_arguments),
    ("shutdown", cmd_shutdown, "stop every module and the orchestrator", _no_wait),
    ("reload", cmd_reload, "compile the plan again and apply what changed", _nothing),
    (
        "rescue",
        cmd_rescue,
        "the rescue shell: find out what failed, mend it",
        _rescue_arguments,
    ),
    ("top", cmd_top, "watch and steer the live system in a full-screen view", _nothing),
    ("events", cmd_events, "follow the event stream", _json),
)
"""Each command: its name, handler, one line of help, and its arguments."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `only` that one (quicker to build)."""
    from partenza import __version__

    parser = _Parser(
        prog="partenza",
        description="Boot, supervise and inspect a plan of modules.",
    )
    parser.add_argument(
        "--version", action="version", version=f"partenza {__version__}"
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the control socket (default: in PARTENZA_RUNTIME_DIR)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="logs and cache (default: PARTENZA_STATE_DIR)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )
    for name, handler, text, arguments in COMMANDS:
        if only is not None and name != only:
            continue
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        arguments(sub)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command a command line names, if it names a known one plainly."""
    words = iter(argv)
    for word in words:
        if word in ("--socket", "--state-dir"):
            next(words, None)
        elif word in ("-h", "--help", "--version"):
            return None
        elif not word.startswith("-"):
            return word if any(word == name for name, *_ in COMMANDS) else None
    return None


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_word(words))
    args = parser.parse_args(words)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    from partenza.client import ClientError, NotRunning

    try:
        return int(args.handler(args))
    except NotRunning as exc:
        return _fail(exc.message, exc.hint, EXIT_NOT_RUNNING)
    except ClientError as exc:
        return _fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
