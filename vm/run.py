"""Boot the VM on this terminal: `python vm/run.py --plan healthy`.

The serial console (ttyS0) is this terminal, so what the guest prints appears
here and what is typed goes to the guest, Ctrl-C included. The VM has no
network (`-nic none`) and ends when the guest powers off or reboots
(`-no-reboot`). From another terminal,

    python vm/run.py --press poweroff       # the guest's power button
    python vm/run.py --press ctrl-alt-del   # the keyboard's Ctrl-Alt-Del

reach it through two Unix sockets in the control folder: the second serial
line (ttyS1), which the plans' `vm-button` module listens on, and qemu's QMP
socket, which presses keys on the emulated keyboard.

The kernel and the archives are built first where the cache lacks them (see
vm/build.py); a plan is a name under vm/plans/ or any plan folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from pathlib import Path

if not __package__:
    # Run as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm import build

PLANS = Path(__file__).resolve().parent / "plans"
QEMU = "qemu-system-x86_64"
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet"
"""The console on the first serial line; a kernel panic (an init that died)
reboots at once, which ends qemu."""
BUTTON_SOCKET = "button.sock"
QMP_SOCKET = "qmp.sock"
KEYS = {"ctrl-alt-del": ["ctrl", "alt", "delete"]}
WORDS = ("poweroff", "reboot")


def plan_folder(plan: str) -> Path:
    """A plan by its name under vm/plans/, or a plan folder."""
    named = PLANS / plan
    if "/" not in plan and named.is_dir():
        return named
    return Path(plan).resolve()


def qemu_command(
    kernel: Path,
    initrd: Path,
    control: Path,
    *,
    cpus: int = 2,
    memory: str = "512M",
    accel: str = "tcg",
    append: str = "",
) -> list[str]:
    """The qemu command line for one boot.

    Args:
        control: The folder for the power button's and QMP's sockets.
        accel: `tcg` (software emulation) or `kvm` (a host with working KVM).
    """
    cpu = "host" if accel == "kvm" else "max"
    return [
        QEMU,
        *("-accel", accel, "-cpu", cpu, "-M", "pc", "-m", memory),
        *("-smp", str(cpus)),
        *("-kernel", str(kernel), "-initrd", str(initrd)),
        *("-append", f"{KERNEL_ARGS} {append}".strip()),
        *("-chardev", "stdio,id=console,mux=off,signal=off"),
        *("-serial", "chardev:console"),
        *(
            "-chardev",
            f"socket,id=button,path={control / BUTTON_SOCKET},server=on,wait=off",
        ),
        *("-serial", "chardev:button"),
        *("-qmp", f"unix:{control / QMP_SOCKET},server=on,wait=off"),
        *("-monitor", "none", "-display", "none", "-nic", "none", "-no-reboot"),
    ]


def prepare_control(control: Path) -> None:
    """Make the control folder, without sockets left by an earlier boot."""
    control.mkdir(parents=True, exist_ok=True)
    for name in (BUTTON_SOCKET, QMP_SOCKET):
        (control / name).unlink(missing_ok=True)


def press(control: Path, what: str, timeout: float = 10.0) -> str:
    """Press the guest's power button (`poweroff`, `reboot`) or a key
    combination on its keyboard (`ctrl-alt-del`); what the guest answered.

    The button's answer is awaited before the line is closed: qemu may drop
    what it has not passed on to the guest when the socket closes.

    Raises:
        OSError: the VM is not running, or does not answer.
    """
    if what in WORDS:
        with socket.socket(socket.AF_UNIX) as line:
            line.settimeout(timeout)
            line.connect(str(control / BUTTON_SOCKET))
            line.sendall(what.encode() + b"\n")
            answer = b""
            try:
                while not answer.endswith(b"\n"):
                    chunk = line.recv(256)
                    if not chunk:
                        break
                    answer += chunk
            except TimeoutError:
                message = f"the power button did not answer in {timeout:g}s"
                raise OSError(message) from None
        return answer.decode(errors="replace").strip()
    keys = [{"type": "qcode", "data": key} for key in KEYS[what]]
    with socket.socket(socket.AF_UNIX) as qmp:
        qmp.settimeout(timeout)
        qmp.connect(str(control / QMP_SOCKET))
        replies = qmp.makefile("rb")
        replies.readline()  # The greeting.
        for command in (
            {"execute": "qmp_capabilities"},
            {"execute": "send-key", "arguments": {"keys": keys}},
        ):
            qmp.sendall(json.dumps(command).encode() + b"\n")
            while True:
                reply = json.loads(replies.readline() or b"{}")
                if "error" in reply:
                    raise OSError(f"qmp refused {command['execute']}: {reply}")
                if "return" in reply or not reply:
                    break
    return f"pressed {'+'.join(KEYS[what])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Boot the VM on this terminal, or press its buttons."
    )
    parser.add_argument(
        "--plan", default="healthy", help="a name under vm/plans/, or a plan folder"
    )
    parser.add_argument("--cache", type=Path, default=build.CACHE)
    parser.add_argument(
        "--control",
        type=Path,
        help="the folder for the button and QMP sockets (default: CACHE/run)",
    )
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="512M")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    parser.add_argument("--append", default="", help="more kernel arguments")
    parser.add_argument(
        "--press",
        choices=(*WORDS, *KEYS),
        help="press a button of the running VM instead of booting one",
    )
    parser.add_argument(
        "--print", action="store_true", help="print the qemu command, do not run it"
    )
    args = parser.parse_args(argv)
    cache = args.cache.resolve()
    control = (args.control or cache / "run").resolve()
    if args.press:
        try:
            print(press(control, args.press))
        except OSError as exc:
            build.say(f"cannot press {args.press}: {exc} (is the VM running?)")
            return 1
        return 0
    if shutil.which(QEMU) is None:
        build.say(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
        return 1
    try:
        image = build.build(cache)
        initrd = image.initrd(plan_folder(args.plan))
    except build.Missing as exc:
        build.say(f"cannot build the VM: {exc}")
        return 1
    command = qemu_command(
        image.kernel,
        initrd,
        control,
        cpus=args.cpus,
        memory=args.memory,
        accel=args.accel,
        append=args.append,
    )
    if args.print:
        print(" ".join(command))
        return 0
    prepare_control(control)
    build.say(
        "booting; it ends when the guest powers off "
        "(`python vm/run.py --press poweroff` from another terminal)"
    )
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
