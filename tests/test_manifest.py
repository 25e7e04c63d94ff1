"""Manifest and plan.toml validation: every kind of bad input, named exactly.

No process is started: manifests are loaded and plans compiled in-process.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from partenza import manifest_doc
from partenza.errors import PlanError, Problem
from partenza.manifest import (
    LogSettings,
    Manifest,
    PlanSettings,
    Restart,
    Stop,
    load_manifest,
    load_settings,
)
from partenza.plan import compile_plan
from partenza.units import format_duration, parse_duration, parse_size
from tests.conftest import write_plan

NAME_FORM = (
    "lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
)


def manifest_problems(tmp_path: Path, text: str, name: str = "web") -> list[Problem]:
    """The problems of one manifest, its file shown as `NAME.toml`."""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    manifest, problems = load_manifest(path, path.name)
    assert (manifest is None) == bool(problems)
    return problems


def plan_problems(folder: Path) -> list[Problem]:
    """Every problem `compile_plan` reports for `folder`."""
    with pytest.raises(PlanError) as caught:
        compile_plan(folder)
    assert caught.value.problems, "a PlanError lists its problems"
    return caught.value.problems


# Schema errors: one manifest, one problem, its field and its expected form.

SCHEMA_CASES = [
    pytest.param(
        'exec = "true"\nrequies = ["db"]\n',
        "requies",
        "unknown key (did you mean 'requires'?)",
        id="unknown-key",
    ),
    pytest.param(
        'exec = "true"\nzzqqxx = 1\n',
        "zzqqxx",
        "unknown key; expected one of: name, description, api_version, "
        "compatibility, exec, env, workdir, user, group, provides, requires, "
        "wants, after, sidecars, sidecar, binding, critical, priority, ready, "
        "heartbeat, health, requires_healthy, check, check_timeout, network, root, "
        "restart, stop, on_failure",
        id="unknown-key-no-near-match",
    ),
    pytest.param(
        'exec = "true"\n[restart]\npolcy = "always"\n',
        "restart.polcy",
        "unknown key (did you mean 'policy'?)",
        id="unknown-nested-restart",
    ),
    pytest.param(
        'exec = "true"\n[stop]\ntimout = "5s"\n',
        "stop.timout",
        "unknown key (did you mean 'timeout'?)",
        id="unknown-nested-stop",
    ),
    pytest.param(
        'exec = "true"\ncritical = "yes"\n',
        "critical",
        "expected true or false, got 'yes'",
        id="bool-as-string",
    ),
    pytest.param(
        'exec = "true"\npriority = "5"\n',
        "priority",
        "expected an integer, got '5'",
        id="int-as-string",
    ),
    pytest.param(
        'exec = "true"\npriority = 1.5\n',
        "priority",
        "expected an integer, got 1.5",
        id="int-as-float",
    ),
    pytest.param(
        'exec = "true"\nrequires = "db"\n',
        "requires",
        "expected a list, got 'db'",
        id="list-as-string",
    ),
    pytest.param(
        'exec = "true"\ndescription = 5\n',
        "description",
        'expected a string, got 5 (quote it: "5")',
        id="string-as-int",
    ),
    pytest.param(
        'exec = "true"\nrestart = "always"\n',
        "restart",
        "expected a table, got 'always'",
        id="table-as-string",
    ),
    pytest.param(
        'exec = "true"\n[stop]\ntimeout = "10 seconds"\n',
        "stop.timeout",
        "expected a duration like 500ms, 10s or 2m, got '10 seconds'",
        id="duration-in-words",
    ),
    pytest.param(
        'exec = "true"\n[stop]\ntimeout = 10\n',
        "stop.timeout",
        "expected a duration like 500ms, 10s or 2m, got the bare number 10 "
        "(write 10s or 10ms)",
        id="duration-bare-number",
    ),
    pytest.param(
        'exec = "true"\n[restart]\ndelay = true\n',
        "restart.delay",
        "expected a duration like 500ms, 10s or 2m, got true",
        id="duration-bool",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "started"\ninterval = "0s"\n',
        "ready.interval",
        "expected more than 0, got '0s'",
        id="duration-zero-interval",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "tcp"\nport = 8080\ntimeout = "0s"\n',
        "ready.timeout",
        "expected more than 0, got '0s'",
        id="duration-zero-ready-timeout",
    ),
    pytest.param(
        'exec = "true"\n[stop]\nsignal = "SIGFOO"\n',
        "stop.signal",
        "expected a signal name like SIGTERM, SIGINT or SIGQUIT, got 'SIGFOO'",
        id="signal-name",
    ),
    pytest.param(
        'exec = "true"\n[stop]\nsignal = 15\n',
        "stop.signal",
        "expected a signal name like SIGTERM, SIGINT or SIGQUIT, got 15",
        id="signal-number",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "log"\npattern = "(unclosed"\n',
        "ready.pattern",
        "not a valid regular expression: missing ), unterminated subpattern at "
        "position 0",
        id="regex",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "tpc"\nport = 80\n',
        "ready",
        "unknown kind 'tpc' (did you mean 'tcp'?); expected one of started, tcp, "
        "exec, file, log, handshake, notify",
        id="ready-kind",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nport = 80\n',
        "ready",
        "needs a `kind`: started, tcp, exec, file, log, handshake, notify",
        id="ready-without-kind",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "tcp"\n',
        "ready.port",
        "required but missing",
        id="ready-tcp-without-port",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "tcp"\nport = 70000\n',
        "ready.port",
        "expected at most 65535, got 70000",
        id="port-range",
    ),
    pytest.param(
        'exec = "true"\n[ready]\nkind = "log"\npattern = "x"\nstream = "out"\n',
        "ready.stream",
        "expected one of 'stdout', 'stderr' or 'any', got 'out' (did you mean "
        "'stdout'?)",
        id="ready-log-stream",
    ),
    pytest.param(
        'description = "no program"\n',
        "exec",
        "required but missing",
        id="missing-exec",
    ),
    pytest.param("exec = []\n", "exec", "the command is empty", id="empty-exec-list"),
    pytest.param('exec = ""\n', "exec", "the command is empty", id="empty-exec"),
    pytest.param(
        'exec = "echo \'unterminated"\n',
        "exec",
        'cannot split "echo \'unterminated" like a shell would: no closing quotation',
        id="exec-unsplittable",
    ),
    pytest.param(
        'exec = ["echo", 1]\n',
        "exec",
        "expected a command as a list of strings or one string, got ['echo', 1]",
        id="exec-not-strings",
    ),
    pytest.param(
        'exec = "true"\nenv = { "1BAD" = "x" }\n',
        "env",
        "'1BAD' is not a valid variable name (letters, digits and '_', "
        "not starting with a digit)",
        id="env-name",
    ),
    pytest.param(
        'exec = "true"\nenv = { PORT = 8080 }\n',
        "env.PORT",
        'expected a string, got 8080 (quote it: "8080")',
        id="env-value-int",
    ),
    pytest.param(
        'exec = "true"\nenv = { DEBUG = true }\n',
        "env.DEBUG",
        'expected a string, got true (quote it: "true")',
        id="env-value-bool",
    ),
    pytest.param(
        'exec = "true"\napi_version = "1"\n',
        "api_version",
        "expected a version MAJOR.MINOR like \"1.0\", got '1'",
        id="api-version-form",
    ),
    pytest.param(
        'exec = "true"\napi_version = 1.0\n',
        "api_version",
        'expected a string, got 1.0 (quote it: "1.0")',
        id="api-version-number",
    ),
    pytest.param(
        'exec = "true"\napi_version = "2.0"\n',
        "api_version",
        "this orchestrator speaks API 1.x; '2.0' has another major",
        id="api-version-major",
    ),
    pytest.param(
        'exec = "true"\ncritical = true\non_failure = "degrade"\n',
        "on_failure",
        "a critical module cannot degrade; drop on_failure (it then defaults to "
        "bluescreen) or set critical = false",
        id="critical-degrade",
    ),
    pytest.param(
        'exec = "true"\non_failure = "degrad"\n',
        "on_failure",
        "expected one of 'degrade', 'failover', 'shutdown', 'bluescreen' or "
        "'fallback', got 'degrad' (did you mean 'degrade'?)",
        id="on-failure",
    ),
    pytest.param(
        'exec = "true"\n[restart]\npolicy = "on_failure"\n',
        "restart.policy",
        "expected one of 'never', 'on-failure' or 'always', got 'on_failure' (did "
        "you mean 'on-failure'?)",
        id="restart-policy",
    ),
    pytest.param(
        'exec = "true"\n[restart]\ndelay = "1m"\n',
        "restart.max_delay",
        "30s is shorter than delay (1m00s); raise max_delay or lower delay",
        id="restart-delays",
    ),
    pytest.param(
        'exec = "true"\n[restart]\nlimit = 0\n',
        "restart.limit",
        "expected at least 1, got 0",
        id="restart-limit",
    ),
    pytest.param(
        'exec = "true"\nsidecar = true\nsidecars = ["other"]\n',
        "sidecars",
        "a sidecar cannot have sidecars of its own",
        id="sidecar-with-sidecars",
    ),
    pytest.param(
        'exec = "true"\nprovides = ["db", "sql", "db"]\n',
        "provides",
        "'db' is listed twice",
        id="provides-repeated",
    ),
    pytest.param(
        'exec = "true"\nsidecars = ["proxy", "proxy"]\n',
        "sidecars",
        "'proxy' is listed twice",
        id="sidecars-repeated",
    ),
    pytest.param(
        'exec = "true"\nname = "Web"\n',
        "name",
        f"expected a name of {NAME_FORM}, got 'Web'",
        id="name",
    ),
    pytest.param(
        'exec = "true"\nprovides = ["http", "Db"]\n',
        "provides[1]",
        f"expected a name of {NAME_FORM}, got 'Db'",
        id="capability-name",
    ),
]


@pytest.mark.parametrize(("text", "field", "message"), SCHEMA_CASES)
def test_schema_problem(tmp_path: Path, text: str, field: str, message: str) -> None:
    assert manifest_problems(tmp_path, text) == [Problem("web.toml", field, message)]


def test_unknown_key_in_a_ready_kind_is_named_under_ready(tmp_path: Path) -> None:
    problems = manifest_problems(
        tmp_path, 'exec = "true"\n[ready]\nkind = "tcp"\nprt = 8080\n'
    )
    assert Problem("web.toml", "ready.prt", "unknown key (did you mean 'port'?)") in (
        problems
    )
    # The misspelt port also leaves the real one missing.
    assert Problem("web.toml", "ready.port", "required but missing") in problems
    assert len(problems) == 2


def test_every_problem_of_a_file_is_listed(tmp_path: Path) -> None:
    text = 'exec = "true"\npriority = "high"\n[stop]\nsignal = "TERMINATE"\n'
    assert manifest_problems(tmp_path, text) == [
        Problem("web.toml", "priority", "expected an integer, got 'high'"),
        Problem(
            "web.toml",
            "stop.signal",
            "expected a signal name like SIGTERM, SIGINT or SIGQUIT, got 'TERMINATE'",
        ),
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    [problem] = manifest_problems(tmp_path, 'exec = "true"\nrestart = \n')
    assert problem.file == "web.toml:2:11"
    assert problem.field is None
    assert problem.message.startswith("TOML syntax error: ")
    assert "line" not in problem.message
    assert str(problem).startswith("web.toml:2:11: TOML syntax error: ")


def test_toml_syntax_error_at_the_end_of_the_file(tmp_path: Path) -> None:
    [problem] = manifest_problems(tmp_path, 'exec = "true"\nrequires = [\n')
    assert problem.file == "web.toml:3:1"
    assert problem.message.startswith("TOML syntax error: ")
    assert "end of document" not in problem.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(b'exec = "caf\xe9"\n')
    assert load_manifest(path, "web.toml") == (
        None,
        [Problem("web.toml", None, "not UTF-8 text (byte 11)")],
    )


def test_valid_manifest_with_every_form(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(
        """
        exec = ["${python}", "-u", "web.py"]
        env = { PORT = "8080" }
        requires = ["db"]
        [ready]
        kind = "exec"
        command = "curl -fs http://127.0.0.1:8080/health"
        interval = "250ms"
        [restart]
        delay = "1.5s"
        max_delay = "2m"
        window = "1h"
        [stop]
        signal = "int"
        """.replace("        ", "")
    )
    manifest, problems = load_manifest(path)
    assert problems == []
    assert manifest is not None
    assert manifest.name == "web"
    assert manifest.ready.kind == "exec"
    assert manifest.ready.command == [
        "curl",
        "-fs",
        "http://127.0.0.1:8080/health",
    ]
    assert manifest.ready.interval == 0.25
    assert (manifest.restart.delay, manifest.restart.max_delay) == (1.5, 120.0)
    assert manifest.restart.window == 3600.0
    assert manifest.stop.signal == "SIGINT"
    assert manifest.failure_strategy == "degrade"


def test_failure_strategy_defaults_by_criticality(tmp_path: Path) -> None:
    path = tmp_path / "db.toml"
    path.write_text('exec = "true"\ncritical = true\n')
    manifest, _ = load_manifest(path)
    assert manifest is not None
    assert manifest.failure_strategy == "bluescreen"


def test_name_from_the_file_must_be_a_module_name(tmp_path: Path) -> None:
    assert manifest_problems(tmp_path, 'exec = "true"\n', name="My Web") == [
        Problem(
            "My Web.toml",
            "name",
            f"the file name 'My Web' is not a module name ({NAME_FORM}); rename "
            "the file or set name",
        )
    ]
    path = tmp_path / "My Web.toml"
    path.write_text('exec = "true"\nname = "web"\n')
    manifest, problems = load_manifest(path)
    assert problems == []
    assert manifest is not None
    assert manifest.name == "web"


# Durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1.5s", 1.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10 seconds", "-1s", ".5s", "1e3s", "10S"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert (
        str(caught.value) == f"expected a duration like 500ms, 10s or 2m, got {text!r}"
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("512KiB", 524288),
        ("4MiB", 4194304),
        ("1GiB", 1 << 30),
        ("500kB", 500_000),
        ("8MB", 8_000_000),
        ("1.5KiB", 1536),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [-1, True, 1.5, "4M", "4 mib", "lots"])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a size like 512KiB, 4MiB or 1GiB"):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "40ms"),
        (0.9996, "1s"),
        (1.5, "1.5s"),
        (2.5, "2.5s"),
        (9.96, "10s"),
        (42.2, "42s"),
        (59.7, "59s"),
        (60, "1m00s"),
        (192, "3m12s"),
        (7500, "2h05m"),
        (3 * 86400 + 3600, "3d01h"),
        (-0.2, "0ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# plan.toml


SETTINGS_CASES = [
    pytest.param(
        'nme = "shop"\n', "nme", "unknown key (did you mean 'name'?)", id="unknown"
    ),
    pytest.param(
        '[logs]\nfile_sze = "4MiB"\n',
        "logs.file_sze",
        "unknown key (did you mean 'file_size'?)",
        id="unknown-nested",
    ),
    pytest.param(
        '[logs]\nfile_size = "4 megabytes"\n',
        "logs.file_size",
        "expected a size like 512KiB, 4MiB or 1GiB, got '4 megabytes'",
        id="size",
    ),
    pytest.param(
        "[logs]\nmax_line = -1\n",
        "logs.max_line",
        "expected a size like 512KiB, 4MiB or 1GiB, got -1",
        id="size-negative",
    ),
    pytest.param(
        "[logs]\nring_lines = 5\n",
        "logs.ring_lines",
        "expected at least 10, got 5",
        id="ring-lines",
    ),
    pytest.param(
        "prefer = { db = 5 }\n",
        "prefer.db",
        'expected a string, got 5 (quote it: "5")',
        id="prefer-value",
    ),
    pytest.param(
        'prefer = { DB = "postgres" }\n',
        "prefer.DB",
        f"expected a key that is a name of {NAME_FORM}, got 'DB'",
        id="prefer-key",
    ),
]


@pytest.mark.parametrize(("text", "field", "message"), SETTINGS_CASES)
def test_settings_problem(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    assert load_settings(path, "plan.toml") == (
        None,
        [Problem("plan.toml", field, message)],
    )


def test_settings_sizes(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('[logs]\nmax_line = "1KiB"\nfile_size = "2MB"\nfile_keep = 0\n')
    settings, problems = load_settings(path)
    assert problems == []
    assert settings is not None
    assert settings.logs == LogSettings(max_line=1024, file_size=2_000_000, file_keep=0)


# Problems the compiler finds in one manifest: programs, folders, users.


def test_exec_relative_path_that_does_not_exist(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"web": 'exec = "bin/web.py"\n'})
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml", "exec", f"no such program: {plan.resolve()}/bin/web.py"
        )
    ]


def test_exec_relative_path_is_taken_from_workdir(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {"web": 'exec = "bin/web.py"\nworkdir = "app"\n'},
    )
    (plan / "bin").mkdir()
    (plan / "bin" / "web.py").write_text("")
    (plan / "bin" / "web.py").chmod(0o755)
    (plan / "app").mkdir()
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml",
            "exec",
            f"no such program: {plan.resolve()}/app/bin/web.py",
        )
    ]


def test_exec_not_executable(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"web": 'exec = "./web.sh --fast"\n'})
    (plan / "web.sh").write_text("#!/bin/sh\n")
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml",
            "exec",
            f"not an executable file: {plan.resolve()}/web.sh",
        )
    ]
    (plan / "web.sh").chmod(0o755)
    assert compile_plan(plan).modules["web"].argv == ("./web.sh", "--fast")


def test_exec_program_not_in_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    plan = write_plan(
        tmp_path / "plan",
        {"web": f'exec = "webserverd --port 80"\nenv = {{ PATH = "{empty}" }}\n'},
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml",
            "exec",
            f"program 'webserverd' not found in PATH ({empty})",
        )
    ]
    (empty / "webserverd").write_text("#!/bin/sh\n")
    (empty / "webserverd").chmod(0o755)
    assert compile_plan(plan).modules["web"].argv[0] == "webserverd"


def test_ready_command_program_is_checked(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "web": """
            exec = "${python} -c pass"
            env = { PATH = "/nonexistent-pz" }
            [ready]
            kind = "exec"
            command = "healthcheck --quiet"
            """
        },
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml",
            "ready.command",
            "program 'healthcheck' not found in PATH (/nonexistent-pz)",
        )
    ]


def test_missing_workdir(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan", {"web": 'exec = "${python}"\nworkdir = "srv/www"\n'}
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/web.toml", "workdir", f"no such folder: {plan.resolve()}/srv/www"
        )
    ]


def test_requirements_are_checked_against_this_orchestrator(tmp_path: Path) -> None:
    """A missing user, or root when not root, is no compile error: `validate`
    refuses it and a boot shows the module blocked, with these reasons."""
    from partenza.plan import compile_plan, unmet_requirements

    plan = compile_plan(
        write_plan(
            tmp_path / "plan",
            {
                "ghost": 'exec = "${python}"\nuser = "no-such-user-pz"\n',
                "nogroup": 'exec = "${python}"\ngroup = "no-such-group-pz"\n',
                "admin": 'exec = "${python}"\nroot = true\n',
                "isolated": 'exec = "${python}"\nnetwork = "none"\n',
            },
        )
    )
    modules = plan.modules
    assert unmet_requirements(modules["ghost"], euid=0, netns=None) == [
        "runs as user 'no-such-user-pz', which does not exist"
    ]
    assert unmet_requirements(modules["nogroup"], euid=0, netns=None) == [
        "runs as group 'no-such-group-pz', which does not exist"
    ]
    assert unmet_requirements(modules["admin"], euid=1000, netns=None) == [
        "needs root; the orchestrator runs as uid 1000"
    ]
    assert unmet_requirements(modules["admin"], euid=0, netns=None) == []
    assert unmet_requirements(modules["isolated"], euid=0, netns="not allowed") == [
        "needs a network namespace of its own (none): not allowed"
    ]
    assert unmet_requirements(modules["isolated"], euid=0, netns=None) == []


def test_existing_user_and_group_are_accepted(tmp_path: Path) -> None:
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    plan = write_plan(
        tmp_path / "plan",
        {"web": f'exec = "${{python}}"\nuser = "{me}"\ngroup = "{group}"\n'},
    )
    spec = compile_plan(plan).modules["web"]
    assert (spec.user, spec.group) == (me, group)


# Problems across files and of the folder itself.


def test_duplicate_module_names(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {"web": 'exec = "${python}"\n', "www": 'exec = "${python}"\nname = "web"\n'},
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/www.toml",
            "name",
            f"duplicate module name 'web', also in {plan}/web.toml",
        )
    ]


def test_a_duplicate_is_blamed_on_the_file_that_took_the_name(
    tmp_path: Path,
) -> None:
    # chatty.toml comes first, and takes web's name: it is the one to mend,
    # and its edge to "web" is no cycle of web's.
    plan = write_plan(
        tmp_path / "plan",
        {
            "chatty": 'name = "web"\nexec = "${python}"\nafter = ["web"]\n',
            "web": 'exec = "${python}"\n',
        },
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/chatty.toml",
            "name",
            f"duplicate module name 'web', also in {plan}/web.toml",
        )
    ]


def test_a_misspelt_kind_is_named(tmp_path: Path) -> None:
    problems = manifest_problems(
        tmp_path, 'exec = "true"\n[ready]\nknd = "tcp"\nport = 80\n'
    )
    [problem] = problems
    assert problem.field == "ready"
    assert problem.message.endswith("unknown key 'knd' (did you mean 'kind'?)")


def test_a_key_set_twice_is_named(tmp_path: Path) -> None:
    [problem] = manifest_problems(tmp_path, 'exec = "true"\nexec = "false"\n')
    assert str(problem) == (
        "web.toml:2:15: TOML syntax error: 'exec' is set twice (give each key once)"
    )


def test_file_name_that_is_not_a_module_name(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"Web_Server": 'exec = "${python}"\n'})
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/Web_Server.toml",
            "name",
            f"the file name 'Web_Server' is not a module name ({NAME_FORM}); "
            "rename the file or set name",
        )
    ]


def test_empty_plan_folder(tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "README").write_text("no manifests here\n")
    assert plan_problems(plan) == [
        Problem(str(plan), None, "no module manifests (*.toml) in the plan folder")
    ]


def test_plan_folder_with_only_plan_toml(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"plan": 'name = "shop"\n'})
    assert plan_problems(plan) == [
        Problem(str(plan), None, "no module manifests (*.toml) in the plan folder")
    ]


def test_hidden_files_are_no_manifests(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan", {"web": 'exec = "${python}"\n'})
    (plan / ".#web.toml").symlink_to("root@host.1234:1700000000")
    (plan / ".web.toml").write_text("not = [toml\n")
    assert list(compile_plan(plan).modules) == ["web"]


def test_missing_plan_folder(tmp_path: Path) -> None:
    assert plan_problems(tmp_path / "nowhere") == [
        Problem(str(tmp_path / "nowhere"), None, "the plan folder does not exist")
    ]
    (tmp_path / "file").write_text("")
    assert plan_problems(tmp_path / "file") == [
        Problem(str(tmp_path / "file"), None, "the plan folder is not a folder")
    ]


def test_bad_plan_toml(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {"web": 'exec = "${python}"\n', "plan": 'name = "shop"\ndesciption = "x"\n'},
    )
    assert plan_problems(plan) == [
        Problem(
            f"{plan}/plan.toml",
            "desciption",
            "unknown key (did you mean 'description'?)",
        )
    ]


def test_problems_of_every_file_are_listed_together(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan",
        {
            "api": 'exec = "${python}"\nrequires = ["db"]\n',
            "db": 'exec = "${python}"\nprioriti = 1\n',
            "web": 'exec = "${python}"\n[ready]\nkind = "tcp"\nport = "80"\n',
            "plan": "[logs]\nring_lines = 1\n",
        },
    )
    assert [str(p).replace(str(plan), "P") for p in plan_problems(plan)] == [
        "P/plan.toml: logs.ring_lines: expected at least 10, got 1",
        "P/db.toml: prioriti: unknown key (did you mean 'priority'?)",
        "P/web.toml: ready.port: expected an integer, got '80'",
        "P/api.toml: requires: api requires 'db', whose manifest P/db.toml has "
        "problems of its own",
    ]


# The reference in docs/manifest.md


DOC = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"


def test_manifest_doc_is_up_to_date() -> None:
    assert manifest_doc.DOC_PATH == DOC
    assert DOC.read_text() == manifest_doc.document(), (
        "docs/manifest.md is out of date: run python -m partenza.manifest_doc --write"
    )


def test_manifest_doc_check_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "manifest.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(manifest_doc, "DOC_PATH", stale)
    assert manifest_doc.main(["--check"]) == 1
    assert manifest_doc.main(["--write"]) == 0
    assert manifest_doc.main(["--check"]) == 0
    assert stale.read_text() == manifest_doc.document()


@pytest.mark.parametrize(
    "model", [Manifest, Restart, Stop, PlanSettings, LogSettings], ids=str
)
def test_reference_documents_every_field(model: type) -> None:
    reference = manifest_doc.reference()
    for name, field in model.model_fields.items():
        description = " ".join((field.description or "").split())
        assert description, f"{model.__name__}.{name} has no docstring"
        assert f"| `{name}` |" in reference
        assert description.replace("|", "\\|") in reference


def test_reference_rows() -> None:
    reference = manifest_doc.reference()
    assert (
        '| `timeout` | duration | `"10s"` | How long to wait after that signal '
        "before SIGKILL. |" in reference
    )
    assert "| `port` | integer, 1 to 65535 | required |" in reference
    assert '| `file_size` | size | `"4MiB"` |' in reference
    assert "| `exec` | command | required |" in reference
    assert "| `requires` | array of names | `[]` |" in reference
    assert '| `ready` | table ([ready](#ready)) | `kind = "started"` |' in reference
    assert '| `kind` | `"tcp"` | required |' in reference


def test_doc_examples_are_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    for block in blocks:
        data = tomllib.loads(block)
        first = block.splitlines()[0]
        if first == "# plan.toml":
            PlanSettings.model_validate(data)
        else:
            Manifest.model_validate(data)


def test_doc_example_plan_compiles(tmp_path: Path) -> None:
    """The example modules, with the modules they name, make a valid plan."""
    text = DOC.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    files = {block.splitlines()[0].split()[1].rstrip(":"): block for block in blocks}
    assert set(files) == {"api.toml", "api-metrics.toml", "plan.toml"}
    plan = write_plan(tmp_path / "shop", files)
    write_plan(
        plan,
        {
            "postgres": 'exec = "${python}"\nprovides = ["db"]\n',
            "sqlite": 'exec = "${python}"\nprovides = ["db"]\npriority = 5\n',
        },
    )
    compiled = compile_plan(plan)
    assert compiled.name == "shop"
    assert compiled.providers["db"] == ["postgres", "sqlite"]
    assert compiled.modules["api"].argv[0] == sys.executable
    assert compiled.waves == [["api-metrics", "postgres"], ["api"]]


def test_files_that_cannot_be_manifests_are_refused_plainly(tmp_path: Path) -> None:
    """A FIFO would hang a reader, /dev/zero would never end, deep nesting would
    overflow the parser's stack: each is a problem with the file named."""
    import os

    from partenza.manifest import load_manifest

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    endless = tmp_path / "endless.toml"
    endless.symlink_to("/dev/zero")
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200_000)
    assert load_manifest(fifo)[1] == [
        Problem(str(fifo), None, "cannot read: not a regular file")
    ]
    assert load_manifest(endless)[1] == [
        Problem(str(endless), None, "cannot read: not a regular file")
    ]
    assert load_manifest(deep)[1] == [
        Problem(str(deep), None, "TOML syntax error: nested too deeply")
    ]
    assert load_manifest(big)[1] == [
        Problem(
            str(big), None, "too large for a manifest: 2000000 bytes (at most 1024 KiB)"
        )
    ]
