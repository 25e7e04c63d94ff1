"""The compiled plan's cache: hits, misses, corrupt entries, the pydantic-free path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from partenza.cache import cache_dir, load_plan
from partenza.errors import PlanError
from partenza.plan import COMPILER_VERSION, Plan, compile_plan, plan_digest
from tests.conftest import DEMO, write_plan

RUN = 'exec = "${python} -c pass"\n'


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    """A small plan with a provider choice, a sidecar and a plan.toml."""
    return write_plan(
        tmp_path / "plan",
        {
            "api": RUN + 'requires = ["db"]\nwants = ["cache"]\nsidecars = ["proxy"]\n'
            '[ready]\nkind = "log"\npattern = "^up"\n',
            "proxy": RUN + "sidecar = true\n",
            "pg": RUN + 'provides = ["db"]\npriority = 2\n',
            "mysql": RUN + 'provides = ["db"]\n',
            "plan": 'name = "shop"\n[logs]\nfile_size = "1MiB"\n',
        },
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def entries(state: Path) -> list[Path]:
    return sorted(cache_dir(state).glob("plan-*.json"))


def test_second_load_is_a_hit(plan_dir: Path, state: Path) -> None:
    first, cached = load_plan(plan_dir, state)
    assert cached is False
    assert [entry.name for entry in entries(state)] == [f"plan-{first.digest}.json"]
    second, cached = load_plan(plan_dir, state)
    assert cached is True
    assert second == first
    assert second == compile_plan(plan_dir)


def test_a_hit_does_not_compile(
    plan_dir: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_plan(plan_dir, state)

    def refuse(folder: Path) -> Plan:
        raise AssertionError("compiled on a cache hit")

    monkeypatch.setattr("partenza.cache.compile_plan", refuse)
    _, cached = load_plan(plan_dir, state)
    assert cached is True


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


CHANGES: dict[str, Callable[[Path], object]] = {
    "byte-added": lambda d: _append(d / "api.toml", " "),
    "byte-changed": lambda d: (d / "pg.toml").write_text(
        (d / "pg.toml").read_text().replace("priority = 2", "priority = 3")
    ),
    "comment-in-plan-toml": lambda d: _append(d / "plan.toml", "# a comment\n"),
    "file-added": lambda d: (d / "extra.toml").write_text(RUN),
    "file-removed": lambda d: (d / "mysql.toml").unlink(),
    "file-renamed": lambda d: (d / "mysql.toml").rename(d / "maria.toml"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_any_change_is_a_miss(
    plan_dir: Path, state: Path, change: Callable[[Path], object]
) -> None:
    before, _ = load_plan(plan_dir, state)
    change(plan_dir)
    after, cached = load_plan(plan_dir, state)
    assert cached is False
    assert after.digest != before.digest
    assert after == compile_plan(plan_dir)
    assert len(entries(state)) == 2
    # And the new plan is cached in turn.
    assert load_plan(plan_dir, state) == (after, True)


def test_a_change_is_seen_by_the_plan(plan_dir: Path, state: Path) -> None:
    load_plan(plan_dir, state)
    (plan_dir / "mysql.toml").write_text(RUN + 'provides = ["db"]\npriority = 9\n')
    plan, cached = load_plan(plan_dir, state)
    assert cached is False
    assert plan.providers["db"] == ["mysql", "pg"]


def test_use_cache_false_compiles_afresh(
    plan_dir: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = load_plan(plan_dir, state)
    compiled: list[Path] = []

    def counting(folder: Path) -> Plan:
        compiled.append(folder)
        return compile_plan(folder)

    monkeypatch.setattr("partenza.cache.compile_plan", counting)
    plan, cached = load_plan(plan_dir, state, use_cache=False)
    assert cached is False
    assert compiled == [plan_dir]
    assert plan == first


@pytest.mark.parametrize(
    "junk",
    [
        b"{not json",
        b"\xff\xfe binary",
        b"",
        b"[]",
        b"null",
        b'"a string"',
        b'{"compiler": 0}',
        json.dumps({"compiler": COMPILER_VERSION}).encode(),
        json.dumps({"compiler": COMPILER_VERSION, "modules": {"a": 5}}).encode(),
    ],
    ids=lambda junk: junk.decode("latin-1")[:16],
)
def test_a_corrupt_entry_is_recompiled(
    plan_dir: Path, state: Path, junk: bytes
) -> None:
    first, _ = load_plan(plan_dir, state)
    [entry] = entries(state)
    entry.write_bytes(junk)
    plan, cached = load_plan(plan_dir, state)
    assert cached is False
    assert plan == first
    # The entry was rewritten: the next load is a hit again.
    assert load_plan(plan_dir, state) == (first, True)


def test_an_entry_for_another_digest_is_not_used(plan_dir: Path, state: Path) -> None:
    load_plan(plan_dir, state)
    [entry] = entries(state)
    data = json.loads(entry.read_text())
    data["digest"] = "0" * 32
    data["name"] = "impostor"
    entry.write_text(json.dumps(data))
    plan, cached = load_plan(plan_dir, state)
    assert (cached, plan.name) == (False, "shop")


def test_an_unwritable_cache_is_no_error(plan_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "state-file"
    blocker.write_text("a file where the state folder should be")
    plan, cached = load_plan(plan_dir, blocker)
    assert cached is False
    assert plan == compile_plan(plan_dir)


def test_an_invalid_plan_is_not_cached(tmp_path: Path, state: Path) -> None:
    folder = write_plan(tmp_path / "bad", {"a": RUN + 'requires = ["b"]\n'})
    with pytest.raises(PlanError):
        load_plan(folder, state)
    assert entries(state) == []


def test_old_entries_are_pruned(tmp_path: Path, state: Path) -> None:
    folder = write_plan(tmp_path / "p", {"a": RUN})
    for index in range(12):
        (folder / "a.toml").write_text(RUN + f"priority = {index}\n")
        load_plan(folder, state)
    assert len(entries(state)) == 8


def test_digest_depends_on_the_folder_as_given(tmp_path: Path) -> None:
    folder = write_plan(tmp_path / "p", {"a": RUN})
    relative = Path(os.path.relpath(folder))
    assert plan_digest(folder) == plan_digest(folder)
    assert plan_digest(folder) != plan_digest(relative)


@pytest.mark.parametrize("source", ["demo", "fixture"])
def test_plan_round_trips_through_json(plan_dir: Path, source: str) -> None:
    plan = compile_plan(DEMO if source == "demo" else plan_dir)
    text = json.dumps(plan.to_json())
    again = Plan.from_json(json.loads(text))
    assert again == plan
    assert again.modules == plan.modules
    assert again.edges == plan.edges
    assert again.notes == plan.notes
    assert again.logs == plan.logs
    assert json.dumps(again.to_json()) == text


def test_from_json_refuses_another_compiler_version(plan_dir: Path) -> None:
    data = compile_plan(plan_dir).to_json()
    data["compiler"] = COMPILER_VERSION + 1
    with pytest.raises(ValueError, match="another version"):
        Plan.from_json(data)
    with pytest.raises(ValueError, match="expected a JSON object"):
        Plan.from_json([])  # type: ignore[arg-type]


def test_a_cached_boot_does_not_import_pydantic(plan_dir: Path, state: Path) -> None:
    expected, _ = load_plan(plan_dir, state)
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from partenza.cache import load_plan
        plan, cached = load_plan(Path(sys.argv[1]), Path(sys.argv[2]))
        print(json.dumps({
            "cached": cached,
            "waves": plan.waves,
            "heavy": sorted(
                name for name in ("pydantic", "pydantic_core", "partenza.manifest",
                                  "tomllib")
                if name in sys.modules
            ),
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(plan_dir), str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"cached": True, "waves": expected.waves, "heavy": []}


def test_a_compile_does_import_pydantic(plan_dir: Path, state: Path) -> None:
    """The check above can fail: without a cache entry pydantic is loaded."""
    script = (
        "import sys; from pathlib import Path; from partenza.cache import load_plan; "
        "plan, cached = load_plan(Path(sys.argv[1]), Path(sys.argv[2])); "
        "print(cached, 'pydantic' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(plan_dir), str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.split() == ["False", "True"], result.stderr
