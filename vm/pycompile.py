"""Compile Python sources to bytecode with the interpreter that runs this file.

`python3.11 vm/pycompile.py JOBS MODE`: JOBS is a JSON file holding a list of
`[source, cfile, dfile]` (the file to read, the `.pyc` to write, and the path
the guest sees), MODE is `timestamp` or `unchecked-hash`. It is run by the
guest's own interpreter, so that the bytecode carries that interpreter's magic
number. Prints a JSON list of `[dfile, error]` for the sources that failed.
"""

from __future__ import annotations

import json
import py_compile
import sys
from concurrent.futures import ProcessPoolExecutor

MODES = {
    "timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
    "unchecked-hash": py_compile.PycInvalidationMode.UNCHECKED_HASH,
}


def _one(job: tuple[str, str, str, str]) -> tuple[str, str] | None:
    source, cfile, dfile, mode = job
    try:
        py_compile.compile(
            source,
            cfile=cfile,
            dfile=dfile,
            doraise=True,
            invalidation_mode=MODES[mode],
        )
    except (py_compile.PyCompileError, OSError, ValueError) as exc:
        return dfile, str(exc).strip().splitlines()[-1]
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in MODES:
        sys.stderr.write("usage: pycompile.py JOBS timestamp|unchecked-hash\n")
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        jobs = [(*job, argv[1]) for job in json.load(handle)]
    with ProcessPoolExecutor() as pool:
        failed = [result for result in pool.map(_one, jobs, chunksize=32) if result]
    json.dump(failed, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
