"""What each file of the site holds, to tell a real change from a rewrite of the same bytes.

Generators rewrite files they did not change (MkDocs writes ``sitemap.xml`` and
``404.html`` on every build, Sphinx copies its ``_static`` files again): those writes
must not count as changes, or every build would be a full reload. A :class:`Fingerprints`
remembers each file's size and, for a file up to :data:`HASH_LIMIT` bytes, a digest of
its content; :meth:`Fingerprints.changed` keeps the paths of a batch whose content is not
what was recorded, and records the new content. Comparing costs a stat, then a read only
when the size is the same. A file bigger than the limit counts as changed on any event.

Standard library only, no I/O beyond reading the files it is asked about.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable

__all__ = ["HASH_LIMIT", "Fingerprints"]

HASH_LIMIT = 4 * 1024 * 1024  # bytes: above, a same-size rewrite is a change
_DIRECTORY = (-1, b"")
_READ = 256 * 1024

Fingerprint = tuple[int, bytes]  # (size, digest; b"" when not hashed), _DIRECTORY for dirs


class Fingerprints:
    """The recorded content of the files below ``root``; not thread-safe (one user)."""

    def __init__(self, root: str, limit: int = HASH_LIMIT) -> None:
        self._root = root
        self._limit = limit
        self._known: dict[str, Fingerprint] = {}

    def __len__(self) -> int:
        return len(self._known)

    def scan(self, keep: Callable[[str], bool] = lambda path: True, budget: int = -1) -> None:
        """Record every path below the root for which ``keep(path)`` is true (a directory
        that is not kept is not entered; symlinked directories are not followed).

        At most ``budget`` bytes are read (-1: no bound); files beyond it are recorded by
        size only, so that a start over a huge site stays quick (a same-size rewrite of
        them counts as a change).
        """
        for top, dirs, files in os.walk(self._root):
            rel_top = os.path.relpath(top, self._root).replace(os.sep, "/")
            prefix = "" if rel_top == "." else rel_top + "/"
            dirs[:] = [d for d in dirs if keep(prefix + d)]
            if prefix:
                self._known[prefix[:-1]] = _DIRECTORY
            for name in files:
                if not keep(prefix + name):
                    continue
                found = self._read(prefix + name, hash_it=budget != 0)
                if found is not None:
                    self._known[prefix + name] = found
                    if budget > 0 and found[1]:
                        budget = max(0, budget - found[0])

    def changed(self, paths: Iterable[str]) -> list[str]:
        """The paths whose content is not what was recorded, in order; records it.

        A path that is missing now and was never recorded (a file created and deleted
        within one build) is no change; an absolute path (outside the root) always is.
        """
        result: dict[str, None] = {}  # an ordered set
        for path in paths:
            if os.path.isabs(path):
                result[path] = None
                continue
            now = self._read(path)
            before = self._known.pop(path, None)
            if now is not None:
                self._known[path] = now
            if now != before or (now is not None and now[0] > self._limit):
                result[path] = None
            if _DIRECTORY in (now, before):
                # A directory created, moved or removed: the events of the files in it
                # may not all have been seen (a file written into a new directory before
                # it was watched), so what is below it is compared too.
                for below in self._below(path):
                    if below not in result and self.changed([below]):
                        result[below] = None
        return list(result)

    def _below(self, directory: str) -> list[str]:
        """Every path known or present below ``directory``."""
        prefix = directory + "/"
        found = {known for known in self._known if known.startswith(prefix)}
        for top, dirs, files in os.walk(os.path.join(self._root, directory)):
            rel_top = os.path.relpath(top, self._root).replace(os.sep, "/")
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.update(f"{rel_top}/{name}" for name in (*dirs, *files))
        return sorted(found)

    def _read(self, path: str, hash_it: bool = True) -> Fingerprint | None:
        full = os.path.join(self._root, path)
        try:
            st = os.stat(full)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return _DIRECTORY
        size = st.st_size
        if size > self._limit or not hash_it or not stat.S_ISREG(st.st_mode):
            return (size, b"")  # (a FIFO or a device is never read: it could block)
        digest = hashlib.blake2b(digest_size=16)
        try:
            # O_NONBLOCK: the path may have become a FIFO since the stat.
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return (size, b"")  # unreadable now: compare by size only
        with open(fd, "rb") as file:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return (size, b"")
                while chunk := file.read(_READ):
                    digest.update(chunk)
            except OSError:
                return (size, b"")
        return (size, digest.digest())
