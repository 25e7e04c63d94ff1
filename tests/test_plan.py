"""The plan compiler: requirements, cycles, providers, sidecars, waves, output.

Everything but the CLI tests runs in-process, without starting a module.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partenza.errors import PlanError
from partenza.plan import Edge, Plan, compile_plan
from partenza.render import plan_text
from tests.conftest import DEMO, PARTENZA, partenza_env, write_plan

RUN = 'exec = "${python} -c pass"\n'
"""The body of a manifest that is valid on its own."""


def plan_of(folder: Path, manifests: dict[str, str]) -> Plan:
    return compile_plan(write_plan(folder, manifests))


def problems_of(folder: Path, manifests: dict[str, str]) -> list[str]:
    """The problems of a plan as text, the folder shown as `P`."""
    write_plan(folder, manifests)
    with pytest.raises(PlanError) as caught:
        compile_plan(folder)
    return [str(problem).replace(str(folder), "P") for problem in caught.value.problems]


def notes_of(plan: Plan) -> list[str]:
    return [str(note).replace(plan.dir, "P") for note in plan.notes]


# Requirements


def test_missing_requirement_names_who_requires_it(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {"api": RUN + 'requires = ["dbb"]\n', "db": RUN},
    ) == [
        "P/api.toml: requires: api requires 'dbb', which no module in the plan "
        "provides (did you mean 'db'?)"
    ]


def test_a_requirement_of_a_broken_manifest_points_at_it(tmp_path: Path) -> None:
    # It parses: what it claims to provide is known.
    problems = problems_of(
        tmp_path / "p",
        {
            "api": RUN + 'requires = ["db"]\n',
            "pg": RUN + 'provides = ["db"]\nbogus = 1\n',
        },
    )
    assert problems[0].startswith("P/pg.toml: bogus: unknown key")
    assert problems[1:] == [
        "P/api.toml: requires: api requires 'db', whose manifest P/pg.toml has "
        "problems of its own"
    ]
    # It does not parse: it may be the one.
    problems = problems_of(
        tmp_path / "q",
        {"api": RUN + 'requires = ["db"]\n', "pg": "provides = [\n"},
    )
    assert problems[0].startswith("P/pg.toml:2:1: TOML syntax error")
    assert problems[1:] == [
        "P/api.toml: requires: api requires 'db', which no module in the plan "
        "provides; P/pg.toml could not be read, and may be the one"
    ]


def test_missing_requirement_suggests_a_capability(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "api": RUN + 'requires = ["postgress"]\n',
            "pg": RUN + 'provides = ["postgres"]\n',
        },
    ) == [
        "P/api.toml: requires: api requires 'postgress', which no module in the "
        "plan provides (did you mean 'postgres'?)"
    ]


def test_missing_requirement_without_a_near_name(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "p", {"api": RUN + 'requires = ["zz"]\n'}) == [
        "P/api.toml: requires: api requires 'zz', which no module in the plan provides"
    ]


def test_soft_dependency_on_something_absent_is_a_note(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {"api": RUN + 'wants = ["cache"]\nafter = ["migrate"]\n'},
    )
    assert notes_of(plan) == [
        "P/api.toml: wants: 'cache' is not in the plan; api starts without it",
        "P/api.toml: after: 'migrate' is not in the plan; api starts without it",
    ]
    assert plan.waves == [["api"]]
    assert plan.edges == [
        Edge("api", None, "wants", "cache", f"{tmp_path}/p/api.toml"),
        Edge("api", None, "after", "migrate", f"{tmp_path}/p/api.toml"),
    ]


# Cycles


def test_two_cycle(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {"a": RUN + 'requires = ["b"]\n', "b": RUN + 'requires = ["a"]\n'},
    ) == [
        'P/a.toml: requires: dependency cycle: a -> b (P/a.toml: requires "b") '
        '-> a (P/b.toml: requires "a")'
    ]


def test_three_cycle_mixing_requires_after_and_wants(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "a": RUN + 'requires = ["b"]\n',
            "b": RUN + 'after = ["c"]\n',
            "c": RUN + 'wants = ["a"]\n',
        },
    ) == [
        'P/a.toml: requires: dependency cycle: a -> b (P/a.toml: requires "b") '
        '-> c (P/b.toml: after "c") -> a (P/c.toml: wants "a")'
    ]


def test_cycle_through_a_capability(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "api": RUN + 'requires = ["db"]\n',
            "pg": RUN + 'provides = ["db"]\nafter = ["api"]\n',
        },
    ) == [
        'P/api.toml: requires: dependency cycle: api -> pg (P/api.toml: requires "db")'
        ' -> api (P/pg.toml: after "api")'
    ]


def test_self_dependency(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {"a": RUN + 'requires = ["a"]\n', "b": RUN},
    ) == ['P/a.toml: requires: dependency cycle: a -> a (P/a.toml: requires "a")']


def test_self_dependency_through_own_capability(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {"a": RUN + 'provides = ["x"]\nwants = ["x"]\n'},
    ) == ['P/a.toml: wants: dependency cycle: a -> a (P/a.toml: wants "x")']


def test_two_separate_cycles_are_both_reported(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "a": RUN + 'requires = ["b"]\n',
            "b": RUN + 'requires = ["a"]\n',
            "c": RUN + 'after = ["d"]\n',
            "d": RUN + 'requires = ["c"]\n',
            "e": RUN + 'requires = ["a"]\n',
        },
    ) == [
        'P/a.toml: requires: dependency cycle: a -> b (P/a.toml: requires "b") '
        '-> a (P/b.toml: requires "a")',
        'P/c.toml: after: dependency cycle: c -> d (P/c.toml: after "d") '
        '-> c (P/d.toml: requires "c")',
    ]


def test_cycle_through_a_sidecar(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "web": RUN + 'sidecars = ["proxy"]\n',
            "proxy": RUN + 'sidecar = true\nrequires = ["web"]\n',
        },
    ) == [
        "P/proxy.toml: requires: dependency cycle: proxy -> web (P/proxy.toml: "
        'requires "web") -> proxy (P/web.toml: sidecars "proxy")'
    ]


# Providers


def test_provider_chosen_by_priority(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "api": RUN + 'requires = ["db"]\n',
            "mysql": RUN + 'provides = ["db"]\npriority = 1\n',
            "pg": RUN + 'provides = ["db"]\npriority = 5\n',
        },
    )
    assert plan.providers == {"db": ["pg", "mysql"]}
    assert plan.choices == {"db": "priority 5 over mysql (1)"}
    assert plan.resolve("db") == "pg"
    assert plan.standby == ["mysql"]
    assert plan.waves == [["pg"], ["api"]]
    assert notes_of(plan) == [
        "P/mysql.toml: provides: mysql is standby: another provider was chosen for db"
    ]


def test_provider_tie_broken_by_name(tmp_path: Path) -> None:
    manifests = {
        "zeta": RUN + 'provides = ["db"]\n',
        "alpha": RUN + 'provides = ["db"]\n',
        "mid": RUN + 'provides = ["db"]\n',
    }
    first = plan_of(tmp_path / "one", manifests)
    second = plan_of(tmp_path / "two", dict(reversed(manifests.items())))
    assert first.providers == second.providers == {"db": ["alpha", "mid", "zeta"]}
    assert first.choices == {"db": "priority 0 tied with mid; first by name"}
    assert first.standby == ["mid", "zeta"]


def test_only_provider(tmp_path: Path) -> None:
    plan = plan_of(tmp_path / "p", {"pg": RUN + 'provides = ["db", "sql"]\n'})
    assert plan.choices == {"db": "only provider", "sql": "only provider"}


def test_prefer_overrides_priority(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "mysql": RUN + 'provides = ["db"]\npriority = 1\n',
            "pg": RUN + 'provides = ["db"]\npriority = 5\n',
            "plan": 'prefer = { db = "mysql" }\n',
        },
    )
    assert plan.providers == {"db": ["mysql", "pg"]}
    assert plan.choices == {"db": "preferred in plan.toml"}
    assert plan.standby == ["pg"]
    assert plan.waves == [["mysql"]]


def test_prefer_naming_a_non_provider_or_unknown_capability(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "pg": RUN + 'provides = ["db"]\n',
            "api": RUN,
            "plan": 'prefer = { db = "api", dbb = "pg" }\n',
        },
    ) == [
        "P/plan.toml: prefer.db: 'api' does not provide 'db'; its providers are pg",
        "P/plan.toml: prefer.dbb: no module provides 'dbb' (did you mean 'db'?)",
    ]


def test_standby_provider_pulled_in_by_module_name(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "mysql": RUN + 'provides = ["db"]\n',
            "pg": RUN + 'provides = ["db"]\npriority = 5\n',
            "report": RUN + 'requires = ["mysql"]\n',
        },
    )
    assert plan.providers["db"] == ["pg", "mysql"]
    assert plan.standby == []
    assert plan.waves == [["mysql", "pg"], ["report"]]
    assert plan.notes == []


def test_standby_provider_not_pulled_in_by_after(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "mysql": RUN + 'provides = ["db"]\n',
            "pg": RUN + 'provides = ["db"]\npriority = 5\n',
            "report": RUN + 'after = ["mysql"]\n',
        },
    )
    assert plan.standby == ["mysql"]
    assert plan.waves == [["pg", "report"]]


def test_capability_colliding_with_a_module_name(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {"pg": RUN + 'provides = ["db", "web"]\n', "web": RUN},
    ) == [
        "P/pg.toml: provides: 'web' is the name of a module (P/web.toml); a "
        "capability must not share a module's name"
    ]


# Sidecars


def test_sidecar_pulled_in_before_its_target(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "db": RUN,
            "web": RUN + 'requires = ["db"]\nsidecars = ["proxy", "metrics"]\n',
            "proxy": RUN + "sidecar = true\n",
            "metrics": RUN + 'sidecar = true\nrequires = ["db"]\n',
        },
    )
    assert plan.waves == [["db", "proxy"], ["metrics"], ["web"]]
    assert plan.standby == []
    assert [e for e in plan.edges if e.kind == "sidecar"] == [
        Edge("web", "proxy", "sidecar", "proxy", f"{tmp_path}/p/web.toml"),
        Edge("web", "metrics", "sidecar", "metrics", f"{tmp_path}/p/web.toml"),
    ]


def test_sidecar_of_a_standby_module_stays_down(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "mysql": RUN + 'provides = ["db"]\nsidecars = ["backup"]\n',
            "pg": RUN + 'provides = ["db"]\npriority = 1\n',
            "backup": RUN + "sidecar = true\n",
        },
    )
    assert plan.standby == ["backup", "mysql"]
    assert plan.waves == [["pg"]]


def test_sidecar_nobody_names_is_a_note(tmp_path: Path) -> None:
    plan = plan_of(tmp_path / "p", {"web": RUN, "proxy": RUN + "sidecar = true\n"})
    assert notes_of(plan) == [
        "P/proxy.toml: sidecar: no module names proxy as a sidecar"
    ]
    assert plan.standby == ["proxy"]
    assert plan.waves == [["web"]]


def test_sidecar_problems(tmp_path: Path) -> None:
    assert problems_of(
        tmp_path / "p",
        {
            "api": RUN + 'sidecars = ["proxy"]\n',
            "web": RUN + 'sidecars = ["db", "proxi", "proxy"]\n',
            "db": RUN,
            "proxy": RUN + "sidecar = true\n",
        },
    ) == [
        "P/web.toml: sidecars: 'db' is not a sidecar (set sidecar = true in P/db.toml)",
        "P/web.toml: sidecars: no sidecar module named 'proxi' (did you mean 'proxy'?)",
        "P/web.toml: sidecars: sidecar 'proxy' is already bound to api",
    ]


# Waves


def test_waves_of_a_diamond(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "top": RUN + 'requires = ["left", "right"]\n',
            "left": RUN + 'requires = ["base"]\n',
            "right": RUN + 'wants = ["base"]\n',
            "base": RUN,
            "loner": RUN,
        },
    )
    assert plan.waves == [["base", "loner"], ["left", "right"], ["top"]]
    assert plan.active == ["base", "loner", "left", "right", "top"]


def test_waves_of_a_long_chain(tmp_path: Path) -> None:
    names = [f"m{index:02d}" for index in range(40)]
    manifests = {names[0]: RUN}
    for before, name in itertools.pairwise(names):
        manifests[name] = RUN + f'requires = ["{before}"]\n'
    plan = plan_of(tmp_path / "p", manifests)
    assert plan.waves == [[name] for name in names]


def test_waves_follow_after_and_wants(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "a": RUN + 'after = ["b"]\n',
            "b": RUN + 'wants = ["c"]\n',
            "c": RUN,
        },
    )
    assert plan.waves == [["c"], ["b"], ["a"]]


def test_every_edge_says_who_declares_it(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "api": RUN + 'requires = ["db"]\nwants = ["cache"]\nafter = ["logs"]\n',
            "pg": RUN + 'provides = ["db"]\n',
            "cache": RUN,
            "logs": RUN,
        },
    )
    file = f"{tmp_path}/p/api.toml"
    assert plan.edges == [
        Edge("api", "pg", "requires", "db", file),
        Edge("api", "cache", "wants", "cache", file),
        Edge("api", "logs", "after", "logs", file),
    ]
    assert [edge.why() for edge in plan.edges] == [
        f'{file}: requires "db"',
        f'{file}: wants "cache"',
        f'{file}: after "logs"',
    ]
    assert [edge.hard for edge in plan.edges] == [True, False, False]


# Placeholders and paths


def test_python_and_plan_dir_are_expanded(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    write_plan(
        folder,
        {
            "web": """
            exec = ["${python}", "${plan_dir}/web.py", "--data=${plan_dir}/data"]
            workdir = "${plan_dir}/srv"
            env = { ROOT = "${plan_dir}", PY = "${python}" }
            [ready]
            kind = "exec"
            command = "${python} -c 'import sys'"
            """,
            "file": """
            exec = "${python} -c pass"
            workdir = "srv"
            [ready]
            kind = "file"
            path = "run/ready"
            """,
        },
    )
    (folder / "srv").mkdir()
    plan = compile_plan(folder)
    base = str(folder.resolve())
    web = plan.modules["web"]
    assert web.argv == (sys.executable, f"{base}/web.py", f"--data={base}/data")
    assert web.workdir == f"{base}/srv"
    assert web.env == {"ROOT": base, "PY": sys.executable}
    assert web.ready.command == (sys.executable, "-c", "import sys")
    assert plan.modules["file"].ready.path == f"{base}/srv/run/ready"
    assert plan.modules["file"].workdir == f"{base}/srv"


def test_compiled_module_fields(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path / "p",
        {
            "db": RUN
            + 'critical = true\n[ready]\nkind = "tcp"\nport = 5432\ntimeout = "5s"\n'
            + '[restart]\npolicy = "always"\nlimit = 3\n[stop]\nsignal = "SIGINT"\n',
            "plan": 'name = "shop"\ndescription = "a shop"\n[logs]\nring_lines = 50\n',
        },
    )
    db = plan.modules["db"]
    assert db.on_failure == "bluescreen"
    assert db.ready.describe() == "tcp 127.0.0.1:5432"
    assert (db.ready.timeout, db.restart.policy, db.restart.limit) == (5.0, "always", 3)
    assert db.stop.signal == "SIGINT"
    assert (plan.name, plan.description, plan.logs.ring_lines) == ("shop", "a shop", 50)


def test_plan_name_defaults_to_the_folder(tmp_path: Path) -> None:
    assert plan_of(tmp_path / "My Plan", {"a": RUN}).name == "my-plan"


# `partenza plan` as text


def test_plan_text_of_the_demo_fits_80_columns() -> None:
    text = plan_text(compile_plan(DEMO))
    lines = text.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert too_wide == []
    assert lines[0] == "plan demo: 4 modules, 4 to start in 2 waves, 0 standby"
    assert f"  folder: {DEMO}" in lines
    start = lines.index("start order")
    waves = lines[start + 1 :]
    assert waves[0] == "  wave 1"
    assert waves[1].startswith("    crashy: ")
    assert "      ready when: notify (sends READY=1)" in lines
    assert "      restart: on-failure, 10 starts in 1m00s; on failure: degrade" in lines
    assert "      ready when: tcp 127.0.0.1:8421" in lines
    assert "      ready when: log /line 1:/" in lines
    assert "      ready when: handshake (says ready on the contract socket)" in lines
    assert "      heartbeat: every 6.0s at most (contract)" in lines
    second = lines.index("  wave 2")
    names = [
        line for line in lines[second:] if line.startswith("    ") and ": " in line
    ]
    assert [line.split(":")[0] for line in names if not line.startswith("      ")] == [
        "    chatty",
        "    worker",
    ]
    assert "  http: web (only provider)" in lines
    for edge in (
        '  chatty -> web       [after]             chatty.toml: after "web"',
        "  worker => web       [requires healthy]  "
        'worker.toml: requires_healthy "http"',
        '  worker -> (absent)  [wants]             worker.toml: wants "cache"',
    ):
        assert edge in lines
    assert lines[-1] == (
        "  worker.toml: wants: 'cache' is not in the plan; worker starts without it"
    )


def test_plan_text_fits_80_columns_in_a_deep_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "demo"
    shutil.copytree(DEMO, deep)
    assert all(len(line) <= 80 for line in plan_text(compile_plan(deep)).splitlines())


def test_plan_text_wraps_long_lines_and_keeps_everything(tmp_path: Path) -> None:
    long = "a-module-with-a-really-quite-long-name-for-wrapping"
    plan = plan_of(
        tmp_path / "p",
        {
            long: RUN
            + 'description = "'
            + "does a great many things, described at length, " * 3
            + '"\nrequires = ["storage-capability"]\nsidecars = ["side"]\n'
            + 'critical = true\n[ready]\nkind = "exec"\n'
            + "command = \"${python} -c 'import socket, sys; sys.exit(0)'\"\n",
            "side": RUN + 'sidecar = true\n[restart]\npolicy = "never"\n',
            "pg": RUN + 'provides = ["storage-capability"]\npriority = 3\n',
            "mysql": RUN + 'provides = ["storage-capability"]\n',
            "plan": 'description = "' + "a plan with a long description " * 4 + '"\n',
        },
    )
    text = plan_text(plan)
    lines = text.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    flat = " ".join(text.split())
    assert "on failure: bluescreen (critical)" in flat
    assert (
        f"ready when: exec {sys.executable} -c 'import socket, sys; sys.exit(0)'"
        in flat
    )
    assert "side (sidecar of " + long + ")" in flat
    assert "restart: never; on failure: degrade" in flat
    assert "storage-capability: pg (priority 3 over mysql (0)); then mysql" in flat
    assert "standby: started only on failover or by hand mysql: provides " in flat
    assert f'{long}.toml: requires "storage-capability"' in flat
    assert f"{long} => side" in flat
    assert f'[sidecar] {long}.toml: sidecars "side"' in flat
    assert "mysql.toml: provides: mysql is standby" in flat


# The command line


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARTENZA, *args],
        env=partenza_env(tmp_path / "cli"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_validate_a_valid_plan_with_notes(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "validate", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"note: {DEMO}/worker.toml: wants: 'cache' is not in the plan; worker "
        "starts without it",
        f"{DEMO}: plan demo is valid: 4 modules, 4 to start in 2 waves",
    ]
    assert result.stderr == ""


def test_validate_lists_every_problem_without_a_traceback(tmp_path: Path) -> None:
    folder = write_plan(
        tmp_path / "bad",
        {
            "api": RUN + 'requires = ["db"]\n[restart]\npolcy = "always"\n',
            "web": 'exec = "no-such-program-pz"\nenv = { PATH = "/nonexistent-pz" }\n',
            "broken": 'exec = "true"\nrequires = [\n',
        },
    )
    result = run_cli(tmp_path, "validate", str(folder))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{folder}/api.toml: restart.polcy: unknown key (did you mean 'policy'?)",
        f"{folder}/broken.toml:3:1: TOML syntax error: "
        + result.stderr.split("TOML syntax error: ")[1].splitlines()[0],
        f"{folder}/web.toml: exec: program 'no-such-program-pz' not found in PATH "
        "(/nonexistent-pz)",
        f"partenza: {folder}: the plan has 3 problems (fix them and run `partenza "
        "validate` again)",
    ]


def test_validate_a_missing_folder(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "validate", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"{tmp_path}/nowhere: the plan folder does not exist"
    )
    assert "Traceback" not in result.stderr


def test_plan_json(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "plan", "--json", str(DEMO))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["waves"] == [["crashy", "web"], ["chatty", "worker"]]
    assert data["providers"] == {"http": ["web"]}
    assert data["choices"] == {"http": "only provider"}
    assert {(e["src"], e["dst"], e["kind"], e["via"]) for e in data["edges"]} == {
        ("chatty", "web", "after", "web"),
        ("worker", "web", "requires", "http"),
        ("worker", None, "wants", "cache"),
    }
    assert Plan.from_json(data) == compile_plan(DEMO)


def test_plan_text_from_the_cli(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "plan", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert result.stdout == plan_text(compile_plan(DEMO)) + "\n"
    # The second run comes from the cache and says the same.
    again = run_cli(tmp_path, "plan", str(DEMO))
    assert again.stdout == result.stdout
    assert list((tmp_path / "cli" / "state" / "cache").glob("plan-*.json"))


def test_plan_of_an_invalid_plan(tmp_path: Path) -> None:
    folder = write_plan(tmp_path / "bad", {"a": RUN + 'requires = ["a"]\n'})
    result = run_cli(tmp_path, "plan", "--json", str(folder))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        f"{folder}/a.toml: requires: dependency cycle: a -> a ({folder}/a.toml: "
        'requires "a")'
    )


def test_validate_lists_every_problem_at_once(tmp_path: Path) -> None:
    """Problems of the settings, of the manifests and of what this machine can
    give are all listed in one run, not one stage at a time."""
    plan = write_plan(
        tmp_path / "plan",
        {
            "a": 'exec = "sleep 1"\nworkdir = "/no/such/dir"\n'
            'user = "no-such-user-pz"\ngroup = "no-such-group-pz"\n',
            "plan.toml": 'prefer = { zz = "a" }\nmain = "nomod"\n',
        },
    )
    done = run_cli(tmp_path, "validate", str(plan))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines == [
        f"{plan}/a.toml: workdir: no such folder: /no/such/dir",
        f"{plan}/plan.toml: prefer.zz: no module provides 'zz'",
        f"{plan}/plan.toml: main: no module named 'nomod'",
        f"{plan}/a.toml: requirements: a runs as user 'no-such-user-pz', "
        "which does not exist",
        f"{plan}/a.toml: requirements: a runs as group 'no-such-group-pz', "
        "which does not exist",
        f"partenza: {plan}: the plan has 5 problems "
        "(fix them and run `partenza validate` again)",
    ]
