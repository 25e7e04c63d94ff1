"""Who may open the rescue shell: root's password, checked as sulogin does.

When the shell runs as root it asks for root's password and checks it against
the hash in the shadow file with the system's crypt(3), called through ctypes
on libcrypt (Python's own `crypt` module is gone from 3.13). A password that
is empty, locked (`!` or `*` first) or missing follows the plan's `[rescue]
empty_password`: `refuse` closes the shell, `allow` opens it without a
password and says so. There are three tries; every failure is logged.

`PARTENZA_RESCUE_SHADOW` names another shadow file. It is a hook for tests and
for containers whose root has no entry in `/etc/shadow`, read by this package
only; whoever can set the rescue shell's environment is root already.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SHADOW = Path("/etc/shadow")
SHADOW_ENV = "PARTENZA_RESCUE_SHADOW"
TRIES = 3
FAIL_DELAY = 1.0
"""Seconds to wait after a wrong password, as login programs do."""
SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

Policy = Literal["refuse", "allow"]
PasswordState = Literal["set", "empty", "locked", "missing"]


class AuthError(Exception):
    """Passwords cannot be checked on this system."""


_libcrypt: ctypes.CDLL | None = None
_crypt_lock = threading.Lock()


def _load_libcrypt() -> ctypes.CDLL:
    global _libcrypt
    if _libcrypt is not None:
        return _libcrypt
    # find_library needs ldconfig, which a small initramfs may lack: then try
    # the sonames of libxcrypt and of the older glibc libcrypt by hand.
    names = [ctypes.util.find_library("crypt"), "libcrypt.so.1", "libcrypt.so.2"]
    for name in names:
        if not name:
            continue
        try:
            library = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        library.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        library.crypt.restype = ctypes.c_char_p
        _libcrypt = library
        return library
    raise AuthError("libcrypt is not installed, so no password can be checked")


def crypt(phrase: str, setting: str) -> str | None:
    """crypt(3): hash `phrase` with the method and salt of `setting`.

    Returns None when the system's crypt refuses the setting.

    Raises:
        AuthError: there is no libcrypt.
    """
    library = _load_libcrypt()
    with _crypt_lock:
        result = library.crypt(phrase.encode(), setting.encode())
    if not result or result.startswith(b"*"):
        return None
    return result.decode("ascii", errors="replace")


def make_hash(password: str, salt: str | None = None) -> str:
    """A SHA-512 (`$6$`) hash of `password`, as `passwd` would write it."""
    salt = salt or "".join(secrets.choice(SALT_CHARS) for _ in range(16))
    hashed = crypt(password, f"$6${salt}$")
    if hashed is None:
        raise AuthError("this system's crypt does not know SHA-512 ($6$) hashes")
    return hashed


def shadow_path() -> Path:
    """The shadow file: `PARTENZA_RESCUE_SHADOW`, else `/etc/shadow`."""
    return Path(os.environ.get(SHADOW_ENV) or SHADOW)


def read_hash(user: str = "root", *, shadow: Path | str | None = None) -> str | None:
    """The password field of `user` in the shadow file; None without a line.

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(shadow) if shadow is not None else shadow_path()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    return None


def password_state(field: str | None) -> PasswordState:
    """Whether a shadow password field holds a password one can type."""
    if field is None:
        return "missing"
    if field == "":
        return "empty"
    if field[0] in "!*":
        return "locked"
    return "set"


def verify(password: str, field: str) -> bool:
    """Whether `password` matches the shadow hash `field`.

    Raises:
        AuthError: there is no libcrypt.
    """
    if password_state(field) != "set":
        return False
    hashed = crypt(password, field)
    return hashed is not None and hmac.compare_digest(hashed, field)


def login(
    ask: Callable[[str], str],
    say: Callable[[str], None],
    *,
    empty_password: str = "refuse",
    user: str = "root",
    shadow: Path | str | None = None,
    tries: int = TRIES,
    delay: float = FAIL_DELAY,
    where: str = "",
) -> bool:
    """Ask for `user`'s password as sulogin does; whether the shell may open.

    Args:
        ask: Shows a prompt and returns what was typed, hidden. EOFError
            gives up; KeyboardInterrupt spends a try.
        say: Shows a line to the person.
        empty_password: The plan's `[rescue] empty_password`: `refuse` or
            `allow` a shell when the password is empty, locked or missing.
        shadow: The shadow file; None reads `shadow_path()`.
        tries: How many passwords may be typed before the shell stays closed.
        delay: Seconds to wait after each wrong password; 0 does not wait.
        where: The terminal, for the log.
    """
    path = Path(shadow) if shadow is not None else shadow_path()
    on = f" on {where}" if where else ""
    try:
        field = read_hash(user, shadow=path)
    except FileNotFoundError:
        # No shadow file (a container, an initramfs): no password is set.
        log.info("rescue: there is no %s", path)
        field = None
    except OSError as exc:
        log.error("rescue: cannot read %s: %s", path, exc.strerror or exc)
        say(f"rescue: cannot read {path}: {exc.strerror or exc}")
        field = None
    state = password_state(field)
    if state != "set":
        what = {
            "empty": f"{user} has an empty password",
            "locked": f"{user}'s password is locked",
            "missing": f"{user} has no password in {path}",
        }[state]
        if empty_password == "allow":
            log.warning("rescue: %s; shell opened without one%s", what, on)
            say(f'rescue: {what}; allowed (empty_password = "allow")')
            return True
        log.error("rescue: %s; shell refused%s", what, on)
        say(f'rescue: {what}; refused (empty_password = "refuse")')
        say(
            "rescue: give root a password, or allow it: "
            '[rescue] empty_password = "allow"'
        )
        return False
    assert field is not None
    for attempt in range(1, tries + 1):
        try:
            password = ask(f"Password for {user}: ")
        except EOFError:
            log.warning("rescue: password prompt closed%s", on)
            return False
        except KeyboardInterrupt:
            password = None
        try:
            if password is not None and verify(password, field):
                log.info("rescue: %s authenticated%s", user, on)
                return True
        except AuthError as exc:
            log.error("rescue: %s", exc)
            say(f"rescue: {exc}; the shell stays closed")
            return False
        what = "wrong password" if password is not None else "password abandoned"
        log.warning(
            "rescue: %s for %s%s (try %d of %d)", what, user, on, attempt, tries
        )
        if delay > 0:
            time.sleep(delay)
        left = tries - attempt
        if left:
            say(f"Login incorrect ({left} {'try' if left == 1 else 'tries'} left)")
        else:
            say("Login incorrect")
    log.error("rescue: %d failed tries for %s%s; shell refused", tries, user, on)
    say(f"rescue: {tries} wrong passwords; the shell stays closed")
    return False
