"""Build a small VM that boots Partenza as its init: a kernel and an initramfs.

`python vm/build.py [--cache DIR]` puts everything in the cache folder
(`.vm-cache/` in the repository by default):

- `kernel/PACKAGE/vmlinux`: Debian's kernel, the `linux-image-6.1.*-amd64`
  package that `linux-image-amd64` depends on, fetched with `apt-get download`
  (never installed), with its xz stream decompressed to the ELF inside, which
  qemu boots directly through its PVH entry.
- `image/base-*.cpio.gz`: Debian's `/usr/bin/python3.11`, the libraries `ldd`
  names, its standard library (without test suites, idle, tkinter and the
  like), the project's runtime dependencies in the interpreter's own
  `site-packages`, busybox from `busybox-static` with its applet links in
  `/bin`, device nodes, `/etc/passwd`, `/etc/group` and `/etc/hosts`.
- `image/project-*.cpio.gz`: the packages `partenza` and `rescue`, `/init`,
  which boots the plan in `/etc/partenza/plan` as PID 1, and the power button
  `vm-button` (vm/guest/button.py).
- `image/plan-*.cpio.gz`: one plan folder, as `/etc/partenza/plan`.

The kernel unpacks concatenated archives in order, so `initrd()` joins the
three into the file qemu loads, and a changed plan or project file costs one
small archive. Bytecode is compiled by the guest's own interpreter and carries
the real mtimes of the sources, which the archives keep, so that the guest
never compiles at import. Every archive is named after a digest of what it
holds and is written only when that changes. The archives are written here, in
Python: no cpio(1), no root.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".vm-cache"
GUEST_PYTHON = "/usr/bin/python3.11"
VENV_SITE = ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
DEPENDENCIES = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "psutil",
    "prompt_toolkit",
    "wcwidth",
)
"""The project's runtime dependencies, as import names (Textual is left out:
the VM has no `partenza top`)."""
PROJECT = ("partenza", "rescue")
STDLIB_LEFT_OUT = frozenset(
    {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "turtle.py",
        "ensurepip",
        "lib2to3",
        "distutils",
        "pydoc_data",
        "venv",
        "sitecustomize.py",
        "EXTERNALLY-MANAGED",
        "__phello__",
        "__hello__.py",
        "site-packages",
        "dist-packages",
    }
)
"""Names left out of the standard library's top folder."""
NEVER = frozenset({"__pycache__", "test", "tests"})
"""Folders left out at any depth."""
DYNLOAD_LEFT_OUT = re.compile(
    r"^(_test|_ctypes_test|_xxtestfuzz|xxlimited|_tkinter|nis\.|_dbm|_gdbm|ossaudiodev)"
)
"""Extension modules left out: tests, and those that pull in large libraries
for what a VM of this kind never does."""
KERNEL_META = "linux-image-amd64"
KERNEL_PACKAGE = re.compile(r"^linux-image-6\.1\.\S+-amd64$")
XZ_MAGIC = b"\xfd7zXZ\x00"
BUSYBOX_PACKAGE = "busybox-static"
NOT_LINKED = frozenset({"busybox", "init", "linuxrc"})
"""Applets that get no link in /bin: /init is Partenza."""
PYC_MODES = ("timestamp", "unchecked-hash")
SELF_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
"""A changed build script rebuilds every archive."""

SHEBANG = "#!/usr/bin/python3.11\n"
INIT = (
    SHEBANG
    + '''\
"""The VM's init: boot the plan in /etc/partenza/plan as PID 1."""

import os
import sys
import time
from pathlib import Path

os.environ.update(
    PATH="/bin:/usr/bin",
    HOME="/root",
    SHELL="/bin/sh",
    TERM="vt100",
    PROMPT_TOOLKIT_NO_CPR="1",
    PARTENZA_RUNTIME_DIR="/run/partenza",
    PARTENZA_STATE_DIR="/var/lib/partenza",
)
os.write(1, b"init: Python up after %.2fs\\n" % time.clock_gettime(time.CLOCK_BOOTTIME))

from partenza.boot import boot  # noqa: E402

code = boot(
    Path("/etc/partenza/plan"),
    state_dir=Path("/var/lib/partenza"),
    socket=Path("/run/partenza/control.sock"),
)
# As the machine's init, boot() powers off or reboots and never returns.
os.write(2, b"init: boot returned %d\\n" % code)
sys.exit(code)
'''
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
DEVICES = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/ttyS0", 4, 64, 0o660),
    ("dev/ttyS1", 4, 65, 0o660),
    ("dev/urandom", 1, 9, 0o666),
    ("dev/random", 1, 8, 0o666),
)
"""Device nodes the image needs before /dev is mounted: the kernel opens the
console for /init, and Python reads /dev/urandom before anything runs."""


class Missing(Exception):
    """An ingredient of the VM can neither be found nor fetched."""


def say(text: str) -> None:
    sys.stderr.write(f"vm: {text}\n")
    sys.stderr.flush()


# The archive format.


@dataclass(frozen=True)
class Entry:
    """One file, folder, link or device of an archive."""

    mode: int
    mtime: int = 0
    source: str | None = None
    """A host file whose bytes are the content."""
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    def size(self) -> int:
        return os.stat(self.source).st_size if self.source else len(self.data)


@dataclass
class Tree:
    """The files of one archive, by path (no leading slash)."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.folder(parent)
        self.entries[path] = entry

    def folder(self, path: str, mode: int = 0o755) -> None:
        self.add(path, Entry(stat.S_IFDIR | mode))

    def file(self, path: str, source: str | Path, mode: int | None = None) -> None:
        info = os.stat(source)
        bits = stat.S_IMODE(info.st_mode) if mode is None else mode
        self.add(
            path, Entry(stat.S_IFREG | bits, int(info.st_mtime), source=str(source))
        )

    def text(self, path: str, text: str, mode: int = 0o644) -> None:
        self.add(path, Entry(stat.S_IFREG | mode, data=text.encode()))

    def symlink(self, path: str, target: str) -> None:
        self.add(path, Entry(stat.S_IFLNK | 0o777, data=target.encode()))

    def device(self, path: str, major: int, minor: int, mode: int) -> None:
        self.add(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def host(self, path: str) -> str:
        """Add the host file at `path` under the same path, with each symlink
        on the way (`/lib -> usr/lib`); the real path it ends at."""
        parts = Path(path).parts[1:]
        current = "/"
        for index, part in enumerate(parts):
            candidate = os.path.join(current, part)
            if os.path.islink(candidate):
                target = os.readlink(candidate)
                self.symlink(candidate, target)
                rest = parts[index + 1 :]
                return self.host(os.path.normpath(os.path.join(current, target, *rest)))
            current = candidate
        self.file(current, current)
        return current

    def digest(self) -> str:
        """What the archive would hold, as a short hash."""
        digest = hashlib.sha256(SELF_DIGEST.encode())
        for path in sorted(self.entries):
            entry = self.entries[path]
            content = entry.source or hashlib.sha256(entry.data).hexdigest()
            record = (path, entry.mode, entry.mtime, entry.size(), entry.rdev, content)
            digest.update(repr(record).encode())
        return digest.hexdigest()[:16]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_cpio(tree: Tree, target: Path, level: int = 6) -> None:
    """Write `tree` as a gzipped cpio archive in the newc format."""
    partial = target.with_name(target.name + ".partial")
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as out,
    ):
        for number, path in enumerate(sorted(tree.entries, key=_path_key), start=1):
            entry = tree.entries[path]
            data = entry.data
            if entry.source is not None:
                data = Path(entry.source).read_bytes()
            _member(out, path, entry, data, number)
        _member(out, "TRAILER!!!", Entry(0), b"", 0)
    partial.replace(target)


def _path_key(path: str) -> list[str]:
    return path.split("/")


def _member(out: gzip.GzipFile, name: str, entry: Entry, data: bytes, ino: int) -> None:
    encoded = name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,
        0,
        1,
        entry.mtime,
        len(data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(encoded),
        0,
    )
    header = b"070701" + "".join(f"{value:08x}" for value in fields).encode()
    out.write(header + encoded + _pad(len(header) + len(encoded)))
    out.write(data + _pad(len(data)))


# The ingredients.


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            check=True,
            capture_output=True,
            text=True,
            **kwargs,  # type: ignore[call-overload]
        )
    except FileNotFoundError as exc:
        raise Missing(f"{argv[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        last = detail[-1] if detail else f"exit status {exc.returncode}"
        raise Missing(f"`{' '.join(argv)}` failed: {last}") from exc


def _download(package: str, folder: Path) -> Path:
    """`apt-get download PACKAGE` into `folder`; the .deb file."""
    folder.mkdir(parents=True, exist_ok=True)
    say(f"fetching {package} with apt-get download")
    _run(["apt-get", "download", "-q", package], cwd=folder)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        raise Missing(f"apt-get download {package} left no .deb in {folder}")
    return found[-1]


def _extract(deb: Path, members: list[str], folder: Path) -> None:
    """Take `members` (shell patterns) out of a .deb, without installing it."""
    folder.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
    ) as unpack:
        try:
            subprocess.run(
                ["tar", "-x", "-C", str(folder), "--wildcards", *members],
                stdin=unpack.stdout,
                check=True,
                capture_output=True,
            )
        except subprocess.CalledProcessError as exc:
            raise Missing(f"cannot extract {members} from {deb.name}") from exc
    if unpack.returncode != 0:
        raise Missing(f"dpkg-deb cannot read {deb}")


def kernel_package() -> str | None:
    """The `linux-image-6.1.*-amd64` package that `linux-image-amd64` depends
    on; None when apt knows no such package (no package lists)."""
    try:
        result = _run(["apt-cache", "depends", KERNEL_META])
    except Missing:
        return None
    for line in result.stdout.splitlines():
        word = line.strip()
        if word.startswith("Depends:"):
            name = word.split(":", 1)[1].strip()
            if KERNEL_PACKAGE.match(name):
                return name
    return None


def decompress_kernel(vmlinuz: Path, target: Path) -> None:
    """Write the ELF vmlinux held in a bzImage's xz stream to `target`."""
    data = vmlinuz.read_bytes()
    start = data.find(XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            target.write_bytes(elf)
            return
        start = data.find(XZ_MAGIC, start + 1)
    raise Missing(f"{vmlinuz.name} holds no xz-compressed ELF kernel")


def kernel(cache: Path) -> Path:
    """The decompressed kernel, from the cache or fetched into it."""
    folder = cache / "kernel"
    package = kernel_package()
    if package is None:
        cached = sorted(folder.glob("*/vmlinux"))
        if cached:
            say(
                f"apt names no {KERNEL_META}: using the cached {cached[-1].parent.name}"
            )
            return cached[-1]
        raise Missing(
            f"apt names no package for {KERNEL_META} (are apt-get's package lists "
            "there? apt-get update fetches them) and no kernel is cached"
        )
    vmlinux = folder / package / "vmlinux"
    if vmlinux.exists():
        return vmlinux
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        deb = _download(package, Path(scratch))
        _extract(deb, ["./boot/vmlinuz-*"], Path(scratch) / "tree")
        found = sorted((Path(scratch) / "tree" / "boot").glob("vmlinuz-*"))
        if not found:
            raise Missing(f"{deb.name} holds no /boot/vmlinuz-*")
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        partial = vmlinux.with_name("vmlinux.partial")
        decompress_kernel(found[0], partial)
        partial.replace(vmlinux)
    for stale in folder.iterdir():
        if stale != vmlinux.parent:
            shutil.rmtree(stale, ignore_errors=True)
    say(f"kernel {package} ready in {time.monotonic() - started:.1f}s")
    return vmlinux


def _is_static(path: Path) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    kinds = (struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum))
    return 3 not in kinds


def busybox(cache: Path) -> Path:
    """A static busybox: the installed `busybox-static`, else fetched."""
    try:
        listing = _run(["dpkg-query", "-L", BUSYBOX_PACKAGE]).stdout.split()
    except Missing:
        listing = []
    for path in listing:
        found = Path(path)
        if path.endswith("/bin/busybox") and found.is_file() and _is_static(found):
            return found
    cached = cache / "busybox" / "busybox"
    if cached.exists():
        return cached
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        deb = _download(BUSYBOX_PACKAGE, Path(scratch))
        _extract(deb, ["./bin/busybox"], Path(scratch) / "tree")
        found = Path(scratch) / "tree" / "bin" / "busybox"
        if not found.exists() or not _is_static(found):
            raise Missing(f"{deb.name} holds no static /bin/busybox")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, cached)
    return cached


@dataclass(frozen=True)
class Python:
    """What the guest's interpreter says of itself."""

    executable: str
    stdlib: str
    dynload: str
    site: str
    tag: str
    version: str


def guest_python() -> Python:
    if not os.access(GUEST_PYTHON, os.X_OK):
        raise Missing(f"{GUEST_PYTHON} is not installed (Debian's python3.11)")
    script = (
        "import json, site, sys, sysconfig, _ctypes, os;"
        "print(json.dumps([sysconfig.get_paths()['stdlib'],"
        " os.path.dirname(_ctypes.__file__), site.getsitepackages()[0],"
        " sys.implementation.cache_tag, sys.version.split()[0]]))"
    )
    stdlib, dynload, site, tag, version = json.loads(
        _run([GUEST_PYTHON, "-I", "-S", "-c", script]).stdout
    )
    return Python(GUEST_PYTHON, stdlib, dynload, site, tag, version)


def shared_libraries(binaries: Iterable[str]) -> tuple[set[str], dict[str, str]]:
    """The libraries `ldd` names for each binary, and the binaries that need
    a library this machine lacks (with its name)."""
    found: set[str] = set()
    lacking: dict[str, str] = {}
    for binary in binaries:
        try:
            output = _run(["ldd", binary]).stdout
        except Missing as exc:
            if "not a dynamic executable" in str(exc):
                continue
            raise
        for line in output.splitlines():
            words = line.split()
            if "=>" in words and words[words.index("=>") + 1] == "not":
                lacking[binary] = words[0]
            elif "=>" in words:
                found.add(words[words.index("=>") + 1])
            elif words and words[0].startswith("/"):
                found.add(words[0])
    return found, lacking


def _walk(top: str, left_out: frozenset[str] = frozenset()) -> Iterable[str]:
    """Every file under `top`, without the folders in NEVER (at any depth) and
    the names in `left_out` (at the top)."""
    for folder, folders, files in os.walk(top):
        at_top = folder == top
        folders[:] = sorted(
            name
            for name in folders
            if name not in NEVER and not (at_top and _left_out(name, left_out))
        )
        for name in sorted(files):
            if at_top and _left_out(name, left_out):
                continue
            yield os.path.join(folder, name)


def _left_out(name: str, left_out: frozenset[str]) -> bool:
    # The interpreter's build configuration (`config-3.11-x86_64-linux-gnu`)
    # is for building extensions, not for running.
    return name in left_out or (bool(left_out) and name.startswith("config-"))


# Bytecode.


@dataclass
class Bytecode:
    """Bytecode compiled by the guest's interpreter, kept in the cache."""

    cache: Path
    python: Python
    mode: str
    jobs: list[tuple[str, str, str]] = field(default_factory=list)
    """`(source, cfile, dfile)` still to compile."""

    def __post_init__(self) -> None:
        self.folder = self.cache / "pyc" / self.mode
        self.index_path = self.folder / "index.json"
        try:
            self.index: dict[str, list[int]] = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.index = {}

    def pyc_path(self, guest: str) -> str:
        """Where the guest looks for the bytecode of `guest`."""
        folder, name = os.path.split(guest)
        stem = name.rsplit(".", 1)[0]
        return f"{folder}/__pycache__/{stem}.{self.python.tag}.pyc"

    def want(self, source: str, guest: str) -> str:
        """The cache file that will hold the bytecode of `source`."""
        cfile = str(self.folder / self.pyc_path(guest).lstrip("/"))
        info = os.stat(source)
        if self.index.get(cfile) != [info.st_mtime_ns, info.st_size] or not (
            os.path.exists(cfile)
        ):
            self.jobs.append((source, cfile, guest))
        return cfile

    def compile(self) -> set[str]:
        """Compile what is wanted; the cache files that could not be made."""
        if not self.jobs:
            return set()
        started = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.cache) as jobs:
            json.dump(self.jobs, jobs)
            jobs.flush()
            script = str(Path(__file__).with_name("pycompile.py"))
            result = _run([self.python.executable, "-I", script, jobs.name, self.mode])
        failed = {guest for guest, _ in json.loads(result.stdout)}
        broken = set()
        for source, cfile, guest in self.jobs:
            if guest in failed:
                broken.add(cfile)
                continue
            info = os.stat(source)
            self.index[cfile] = [info.st_mtime_ns, info.st_size]
        partial = self.index_path.with_name("index.json.partial")
        partial.write_text(json.dumps(self.index))
        partial.replace(self.index_path)
        say(
            f"compiled {len(self.jobs) - len(failed)} files with Python "
            f"{self.python.version} in {time.monotonic() - started:.1f}s"
            + (f" ({len(failed)} would not compile)" if failed else "")
        )
        self.jobs = []
        return broken


class Sources:
    """Python sources to put in a tree, each with its bytecode."""

    def __init__(self, tree: Tree, bytecode: Bytecode) -> None:
        self.tree = tree
        self.bytecode = bytecode
        self.pycs: list[tuple[str, str]] = []

    def add(self, source: str, guest: str) -> None:
        self.tree.file(guest, source)
        if source.endswith(".py"):
            self.pycs.append((guest, self.bytecode.want(source, guest)))

    def finish(self) -> None:
        broken = self.bytecode.compile()
        for guest, cfile in self.pycs:
            if cfile not in broken:
                self.tree.file(self.bytecode.pyc_path(guest), cfile, mode=0o644)


# The archives.


def base_tree(cache: Path, python: Python, bytecode: Bytecode) -> Tree:
    """Python, its standard library and libraries, the dependencies, busybox."""
    tree = Tree()
    for folder in ("bin", "etc", "proc", "sys", "run", "usr/bin", "var/lib/partenza"):
        tree.folder(folder)
    tree.folder("tmp", 0o1777)
    tree.folder("root", 0o700)
    tree.symlink("sbin", "bin")
    for path, major, minor, mode in DEVICES:
        tree.device(path, major, minor, mode)
    tree.text("etc/passwd", PASSWD)
    tree.text("etc/group", GROUP)
    tree.text("etc/hosts", HOSTS)

    # The interpreter and its standard library.
    sources = Sources(tree, bytecode)
    binaries = [python.executable]
    tree.host(python.executable)
    tree.symlink("usr/bin/python3", os.path.basename(python.executable))
    for path in _walk(python.stdlib, STDLIB_LEFT_OUT):
        if os.path.islink(path) or path.startswith(python.dynload + "/"):
            continue
        sources.add(path, path)
    for path in _walk(python.dynload):
        if not DYNLOAD_LEFT_OUT.match(os.path.basename(path)):
            binaries.append(path)

    # The dependencies, in the interpreter's own site-packages.
    if not VENV_SITE.is_dir():
        raise Missing(f"no {VENV_SITE}: install the project first (make test)")
    for name in DEPENDENCIES:
        package = VENV_SITE / name
        module = VENV_SITE / f"{name}.py"
        if package.is_dir():
            files = list(_walk(str(package)))
        elif module.is_file():
            files = [str(module)]
        else:
            raise Missing(f"{name} is not installed in {VENV_SITE}")
        for info in VENV_SITE.glob("*.dist-info"):
            project = info.name.split("-", 1)[0].lower().replace("-", "_")
            if project == name.lower():
                files += list(_walk(str(info)))
        for path in files:
            guest = python.site + "/" + os.path.relpath(path, VENV_SITE)
            if path.endswith(".so"):
                binaries.append(path)
                tree.file(guest, path)
            else:
                sources.add(path, guest)

    # Every shared library they link with, from this machine.
    libraries, lacking = shared_libraries(binaries)
    for binary, library in sorted(lacking.items()):
        say(f"left out {os.path.basename(binary)}: this machine has no {library}")
    for binary in binaries[1:]:
        if binary in lacking:
            continue
        if binary.startswith(python.dynload + "/"):
            tree.file(binary, binary)
    for library in sorted(libraries):
        tree.host(library)
    sources.finish()

    # busybox, with a link in /bin for each applet.
    program = busybox(cache)
    tree.file("bin/busybox", program, mode=0o755)
    applets = _run([str(program), "--list"]).stdout.split()
    for applet in applets:
        if applet not in NOT_LINKED and f"bin/{applet}" not in tree.entries:
            tree.symlink(f"bin/{applet}", "busybox")
    return tree


def project_tree(python: Python, bytecode: Bytecode) -> Tree:
    """Partenza, its rescue shell, /init, and the power button (`vm-button`)."""
    tree = Tree()
    sources = Sources(tree, bytecode)
    for name in PROJECT:
        top = ROOT / name
        for path in _walk(str(top)):
            sources.add(path, python.site + "/" + os.path.relpath(path, ROOT))
    sources.finish()
    tree.text("init", INIT, mode=0o755)
    button = Path(__file__).with_name("guest") / "button.py"
    tree.text("usr/bin/vm-button", SHEBANG + button.read_text(), mode=0o755)
    return tree


def plan_tree(plan: Path) -> Tree:
    """A plan folder as /etc/partenza/plan."""
    if not (plan / "plan.toml").is_file() and not any(plan.glob("*.toml")):
        raise Missing(f"{plan} is not a plan folder: it has no .toml file")
    tree = Tree()
    tree.folder("etc/partenza/plan")
    for path in _walk(str(plan)):
        relative = os.path.relpath(path, plan)
        if not any(part.startswith(".") for part in Path(relative).parts):
            tree.file(f"etc/partenza/plan/{relative}", path)
    return tree


def archive(cache: Path, name: str, tree: Tree) -> Path:
    """The archive of `tree`, written unless one with its digest exists."""
    folder = cache / "image"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{tree.digest()}.cpio.gz"
    if target.exists():
        return target
    started = time.monotonic()
    write_cpio(tree, target)
    _prune(folder, name, ".cpio.gz", target)
    size = sum(entry.size() for entry in tree.entries.values())
    say(
        f"wrote {target.name}: {len(tree.entries)} entries, {size / 1e6:.1f} MB, "
        f"{target.stat().st_size / 1e6:.1f} MB gzipped, in "
        f"{time.monotonic() - started:.1f}s"
    )
    return target


def _prune(folder: Path, name: str, suffix: str, keep: Path) -> None:
    """Remove the earlier versions of `keep`: `NAME-DIGEST.SUFFIX`."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}{re.escape(suffix)}")
    for stale in folder.iterdir():
        if stale != keep and pattern.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class Image:
    """A kernel and the archives every boot of it shares."""

    cache: Path
    kernel: Path
    archives: tuple[Path, ...]

    def initrd(self, plan: Path) -> Path:
        """One file for qemu's -initrd: the archives, then the plan's."""
        plan_archive = archive(self.cache, f"plan-{plan.name}", plan_tree(plan))
        parts = (*self.archives, plan_archive)
        digest = hashlib.sha256("".join(p.name for p in parts).encode()).hexdigest()
        folder = self.cache / "initrd"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{plan.name}-{digest[:16]}.img"
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            with open(partial, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out)
            partial.replace(target)
            _prune(folder, plan.name, ".img", target)
        return target


def build(cache: Path = CACHE, pyc: str = "timestamp") -> Image:
    """The VM's kernel and archives, built where the cache lacks them.

    Raises:
        Missing: an ingredient can neither be found nor fetched.
    """
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    vmlinux = kernel(cache)
    python = guest_python()
    bytecode = Bytecode(cache, python, pyc)
    base = archive(cache, "base", base_tree(cache, python, bytecode))
    project = archive(cache, "project", project_tree(python, bytecode))
    say(f"image ready in {time.monotonic() - started:.1f}s")
    return Image(cache, vmlinux, (base, project))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="the cache folder")
    parser.add_argument(
        "--pyc",
        choices=PYC_MODES,
        default="timestamp",
        help="how the guest checks its bytecode (default: timestamp)",
    )
    parser.add_argument(
        "--plan", type=Path, action="append", default=[], help="a plan folder too"
    )
    args = parser.parse_args(argv)
    try:
        image = build(args.cache.resolve(), args.pyc)
        initrds = [image.initrd(plan.resolve()) for plan in args.plan]
    except Missing as exc:
        say(f"cannot build the VM: {exc}")
        return 1
    print(f"kernel  {image.kernel}")
    for part in image.archives:
        print(f"archive {part}")
    for initrd in initrds:
        print(f"initrd  {initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
