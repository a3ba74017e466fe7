"""A private copy of the served directory as the last good ``--build`` left it.

A generator that fails half-way (it emptied its output, or wrote half the pages) would
leave a broken site behind; while the latest build has failed the server answers from
this copy instead (see :class:`sitepeek.build.BuildRunner`). :meth:`Snapshot.refresh`
runs after each good build, before the next one starts, and copies only what changed
since the previous refresh: a file whose (device, inode, size, mtime, ctime) is the
same as at its last copy is the same file (ctime changes on every write, and no tool
can set it back).

Real copies, never hard links: generators often rewrite files in place, which would
rewrite a hard-linked copy too. Each file is copied to a temporary name and renamed
over the old copy, so a reader never sees a half-copied file. A symlink whose target
is inside the served directory becomes a relative link to the same place in the copy;
any other symlink is copied as it is (the resolver refuses what leaves its root, in
the copy as in the original). FIFOs, sockets and devices are never served: left out.

The copy lives in a temporary directory (``$TMPDIR``) made at the first refresh and
removed by :meth:`Snapshot.remove`; one left behind by a sitepeek that was SIGKILLed is
removed by the next one. A site over :data:`LIMIT` bytes (or half the free space of the
temporary file system) gets no copy: its failed builds are served as they are.

Standard library only; used by one thread at a time (the build runner's), except
:meth:`Snapshot.remove`, which may come from another while a refresh runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable

__all__ = ["LIMIT", "PREFIX", "Snapshot"]

LIMIT = 512 * 1024 * 1024  # bytes of regular files; a bigger site gets no copy
PREFIX = "sitepeek-snapshot-"  # + the owner's pid + "-" + random
_STALE = re.compile(re.escape(PREFIX) + r"(\d+)-")
_TEMP_PREFIX = ".sitepeek-copy-"  # a file being copied (a dotfile: never served)
_CHUNK = 1 << 20
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})  # the copy itself cannot be made
REMOVE_WAIT = 5.0  # how long remove() waits for a refresh to notice it

# What the copy of one entry was made from: ("f", dev, ino, size, mtime_ns, ctime_ns),
# ("d",) or ("l", the link's target in the copy).
Stamp = tuple[object, ...]


class _Failed(Exception):
    """The copy cannot be made (too big, no space, unreadable root); str: why."""


class _Removed(Exception):
    """remove() was called while a refresh ran."""


class Snapshot:
    """The copy of ``source``; ``skip(name)`` leaves entries out (the build's fence)."""

    def __init__(
        self,
        source: str | os.PathLike[str],
        limit: int = LIMIT,
        skip: Callable[[str], bool] = lambda name: False,
        temp_dir: str | None = None,
    ) -> None:
        self._source = os.path.realpath(os.fspath(source))
        self._source_prefix = self._source.rstrip(os.sep) + os.sep
        self._limit = limit
        self._skip = skip
        self._temp_dir = temp_dir
        self._copy: str | None = None  # made at the first refresh
        self._manifest: dict[str, Stamp] = {}
        self._valid = False
        self._removed = False
        self._lock = threading.Lock()  # held by a refresh; remove() waits for it
        self.size = 0  # bytes of the regular files copied, at the last good refresh
        self.copied = 0  # files copied by the last refresh

    @property
    def directory(self) -> str | None:
        """The copy of the last refresh, if it succeeded (else None)."""
        return self._copy if self._valid else None

    def refresh(self) -> str | None:
        """Bring the copy up to date with the source: None when it is, else why not
        (the copy is then dropped, and :attr:`directory` is None until a later refresh
        succeeds)."""
        with self._lock:
            if self._removed:
                return "sitepeek is stopping"
            self._valid = False
            try:
                if self._copy is None:
                    self._copy = self._make_directory()
                self._walk()
            except _Removed:
                return "sitepeek is stopping"
            except _Failed as exc:
                self._drop()
                return str(exc)
            except OSError as exc:
                self._drop()
                return exc.strerror or str(exc)
            self._valid = True
            return None

    def cancel(self) -> None:
        """Stop a refresh running now (sitepeek is stopping); :meth:`remove` follows."""
        self._removed = True

    def remove(self) -> None:
        """Remove the copy for good (on exit); a refresh running now is abandoned."""
        self._removed = True
        locked = self._lock.acquire(timeout=REMOVE_WAIT)
        try:
            self._drop()
        finally:
            if locked:
                self._lock.release()

    # -- the copy ------------------------------------------------------------------------
    def _make_directory(self) -> str:
        parent = self._temp_dir or tempfile.gettempdir()
        _remove_stale(parent)
        return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)

    def _drop(self) -> None:
        self._valid = False
        self._manifest = {}
        self.size = 0
        copy, self._copy = self._copy, None
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)

    def _walk(self) -> None:
        assert self._copy is not None
        limit = self._room()
        seen: dict[str, Stamp] = {}
        total = copied = 0
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            try:
                with os.scandir(os.path.join(self._source, rel_dir)) as scan:
                    entries = list(scan)
            except OSError as exc:
                if not rel_dir:
                    raise _Failed(f"cannot read {self._source}: {exc.strerror}") from None
                continue  # an unreadable directory is not served either
            for entry in entries:
                if self._removed:
                    raise _Removed
                if self._skip(entry.name):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                mode = st.st_mode
                stamp: Stamp
                if stat.S_ISLNK(mode):
                    stamp = ("l", self._link_target(entry.path, rel))
                elif stat.S_ISDIR(mode):
                    stamp = ("d",)
                elif stat.S_ISREG(mode):
                    total += st.st_size
                    if total > limit:
                        raise _Failed(f"the site is over {_mib(limit)}")
                    stamp = ("f", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                else:
                    continue  # FIFOs, sockets, devices: never served
                old = self._manifest.get(rel)
                if old != stamp:
                    if not self._apply(rel, entry.path, stamp, old):
                        continue  # unreadable: not served either
                    copied += stamp[0] == "f"
                seen[rel] = stamp
                if stamp[0] == "d":
                    pending.append(rel)
        # What the source no longer has goes (children before their parents).
        for rel in sorted(self._manifest.keys() - seen.keys(), reverse=True):
            _delete(os.path.join(self._copy, rel))
        self._manifest = seen
        self.size = total
        self.copied = copied

    def _room(self) -> int:
        """The size limit: :data:`LIMIT`, or half of what the copy may still take."""
        assert self._copy is not None
        try:
            free = shutil.disk_usage(self._copy).free
        except OSError:
            return self._limit
        return min(self._limit, self.size + free // 2)

    def _apply(self, rel: str, source: str, stamp: Stamp, old: Stamp | None) -> bool:
        """Make the copy of ``rel`` match ``stamp``; False if the source is unreadable."""
        assert self._copy is not None
        target = os.path.join(self._copy, rel)
        if old is not None and (old[0] == "d") != (stamp[0] == "d"):
            _delete(target)  # a directory became a file or a link, or the other way
        kind = stamp[0]
        if kind == "d":
            # (Its own mode, not the source's: a read-only directory must still
            # take the copies of its files.)
            with contextlib.suppress(FileExistsError):
                os.mkdir(target, 0o700)
            return True
        temporary = os.path.join(os.path.dirname(target), f"{_TEMP_PREFIX}{os.getpid()}")
        if kind == "l":
            _delete(temporary)
            os.symlink(str(stamp[1]), temporary)
        elif not self._copy_file(source, temporary):
            return False
        os.replace(temporary, target)
        return True

    @staticmethod
    def _copy_file(source: str, temporary: str) -> bool:
        """Copy the regular file ``source`` (contents, mode, times) to ``temporary``;
        False if it is gone, unreadable or no longer a regular file (what a file being
        replaced meanwhile costs is that file, never the whole copy). Out of room, the
        OSError is raised."""
        try:  # (not blocking on a FIFO swapped in, not following a link)
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        with open(fd, "rb") as reader:
            st = os.fstat(fd)  # (what was opened, whatever the path names now)
            if not stat.S_ISREG(st.st_mode):
                return False
            try:
                with open(temporary, "wb") as writer:
                    shutil.copyfileobj(reader, writer, _CHUNK)
                os.chmod(temporary, stat.S_IMODE(st.st_mode))
                os.utime(temporary, ns=(st.st_atime_ns, st.st_mtime_ns))
            except OSError as exc:
                _delete(temporary)
                if exc.errno in _NO_ROOM:
                    raise
                return False
        return True

    def _link_target(self, path: str, rel: str) -> str:
        """Where the copy of the symlink ``path`` points: the same place in the copy
        when its target is inside the source, else where it points now."""
        assert self._copy is not None
        try:
            target = os.readlink(path)
        except OSError:
            return ""
        real = os.path.realpath(path)
        if real != self._source and not real.startswith(self._source_prefix):
            return target
        inside = os.path.join(self._copy, os.path.relpath(real, self._source))
        return os.path.relpath(inside, os.path.dirname(os.path.join(self._copy, rel)))


def _delete(path: str) -> None:
    """Remove a file, link or directory tree, if it is there."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # gone already (a directory above it became a file)


def _remove_stale(parent: str) -> None:
    """Remove the copies of sitepeeks that are gone (killed without a chance to clean
    up): ours, named after a pid no process has now."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _STALE.match(name)
        if match is None:
            continue
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != os.getuid() or _alive(int(match.group(1))):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB" if size >= 1024 * 1024 else f"{size} bytes"
