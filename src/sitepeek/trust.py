"""Install sitepeek's local CA where this machine's browsers look, or remove it.

Two places matter on Linux: the system store (Debian and Ubuntu: a file in
/usr/local/share/ca-certificates, then ``update-ca-certificates``; curl, Python,
Node and Chrome on some distributions read it) and the NSS databases Chromium
(``~/.pki/nssdb``) and Firefox (one per profile) use. Each step prints what it
changes; only the system store needs root, and only it is run through ``sudo``
(when not root already). A missing tool is one line saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sitepeek.certs import Authority

__all__ = ["SYSTEM_DIR", "trust", "untrust"]

SYSTEM_DIR = Path("/usr/local/share/ca-certificates")
Say = Callable[[str], None]


def _system_file(ca: Authority) -> Path:
    # One file per CA (a user@host name can hold characters a file name should not).
    return SYSTEM_DIR / f"sitepeek-local-ca-{ca.fingerprint.replace(':', '')[:16].lower()}.crt"


def _nss_databases(home: Path) -> list[Path]:
    """Chromium's database (made if missing) and every Firefox profile's."""
    found = [home / ".pki" / "nssdb"]
    found += sorted(p.parent for p in (home / ".mozilla" / "firefox").glob("*/cert9.db"))
    return found


def _run(command: list[str], say: Say) -> bool:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        say(f"  failed: {' '.join(command)}: {detail[-1] if detail else done.returncode}")
        return False
    return True


def _privileged(command: list[str]) -> list[str] | None:
    if os.geteuid() == 0:
        return command
    sudo = shutil.which("sudo")
    return None if sudo is None else [sudo, *command]


def trust(ca: Authority, say: Say, system: bool = True, browsers: bool = True) -> bool:
    """Install ``ca``; True when every place asked for now trusts it."""
    ok = True
    if system:
        ok = _system_trust(ca, say) and ok
    if browsers:
        ok = _nss_trust(ca, say) and ok
    return ok


def untrust(ca: Authority, say: Say, system: bool = True, browsers: bool = True) -> bool:
    """Remove ``ca`` from where :func:`trust` put it; True when it is gone everywhere."""
    ok = True
    if system:
        ok = _system_untrust(ca, say) and ok
    if browsers:
        ok = _nss_untrust(ca, say) and ok
    return ok


# -- the system store -------------------------------------------------------------------
def _system_tool(say: Say) -> str | None:
    tool = shutil.which("update-ca-certificates")
    if tool is None or not SYSTEM_DIR.parent.is_dir():
        say(
            "System store: skipped (update-ca-certificates not found: Debian and Ubuntu "
            "only for now; install the ca-certificates package there)."
        )
    return tool


def _system_trust(ca: Authority, say: Say) -> bool:
    tool = _system_tool(say)
    if tool is None:
        return False
    target = _system_file(ca)
    install = _privileged(["install", "-D", "-m", "0644", str(ca.cert_path), str(target)])
    update = _privileged([tool])
    if install is None or update is None:
        say("System store: skipped (needs root, and sudo was not found).")
        return False
    say(f"System store: adding {target} and running update-ca-certificates")
    return _run(install, say) and _run(update, say)


def _system_untrust(ca: Authority, say: Say) -> bool:
    tool = _system_tool(say)
    if tool is None:
        return False
    target = _system_file(ca)
    if not target.exists():
        say(f"System store: nothing to remove ({target} does not exist).")
        return True
    remove = _privileged(["rm", "-f", str(target)])
    update = _privileged([tool, "--fresh"])
    if remove is None or update is None:
        say("System store: skipped (needs root, and sudo was not found).")
        return False
    say(f"System store: removing {target} and running update-ca-certificates --fresh")
    return _run(remove, say) and _run(update, say)


# -- NSS: Chromium and Firefox ----------------------------------------------------------
def _certutil(say: Say) -> str | None:
    tool = shutil.which("certutil")
    if tool is None:
        say(
            "Browsers (NSS): skipped (certutil not found: install libnss3-tools on "
            "Debian/Ubuntu, nss-tools on Fedora)."
        )
    return tool


def _nss_trust(ca: Authority, say: Say) -> bool:
    tool = _certutil(say)
    if tool is None:
        return False
    ok = True
    for db in _nss_databases(Path.home()):
        if not (db / "cert9.db").exists():
            say(f"Browsers (NSS): creating the database {db}")
            db.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _run([tool, "-d", f"sql:{db}", "-N", "--empty-password"], say):
                ok = False
                continue
        say(f"Browsers (NSS): adding {ca.name!r} to {db}")
        command = [tool, "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", ca.name]
        ok = _run([*command, "-i", str(ca.cert_path)], say) and ok
    return ok


def _nss_untrust(ca: Authority, say: Say) -> bool:
    tool = _certutil(say)
    if tool is None:
        return False
    ok = True
    for db in _nss_databases(Path.home()):
        if not (db / "cert9.db").exists():
            continue
        listed = subprocess.run(
            [tool, "-d", f"sql:{db}", "-L", "-n", ca.name],
            capture_output=True,
            check=False,
        )
        if listed.returncode != 0:
            say(f"Browsers (NSS): nothing to remove in {db}")
            continue
        say(f"Browsers (NSS): removing {ca.name!r} from {db}")
        ok = _run([tool, "-d", f"sql:{db}", "-D", "-n", ca.name], say) and ok
    return ok
