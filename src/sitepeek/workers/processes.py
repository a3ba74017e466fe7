"""Process model: pre-forked workers, each running the greenlet engine.

A supervisor forks N workers that all accept on one shared listening socket (as
gunicorn's gevent workers do), restarts any worker that dies, and stops them all on
SIGINT/SIGTERM. Workers notice a dead supervisor (PR_SET_PDEATHSIG on Linux, and a
parent-pid check everywhere) and exit, so a SIGKILLed supervisor leaves no server
behind. The supervisor never imports gevent: only forked children do.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from sitepeek.changes import (
    ChangeEvent,
    ChangeFeed,
    Outcome,
    PageSeen,
    Touched,
    decode,
    decode_outcome,
    encode,
    encode_outcome,
)
from sitepeek.concurrency import Io
from sitepeek.config import Config
from sitepeek.console import write_line
from sitepeek.workers.base import ConnectionHandler, HandlerFactory, stop_signals

if TYPE_CHECKING:
    import gevent.event

_PR_SET_PDEATHSIG = 1
_PARENT_CHECK_SECONDS = 0.5
_FAST_EXIT_SECONDS = 1.0  # a worker dying sooner than this after its start is crashing
_MAX_RESTART_DELAY = 5.0
_COUNT = struct.Struct("=Q")  # a worker's request count, in its slot of the shared tally


class _Tally:
    """Requests answered per worker slot, in memory shared across the fork: a worker
    writes its own count (periodically and when it stops), the supervisor adds up the
    counts of the workers it reaped, so the stop summary covers every worker."""

    def __init__(self, slots: int) -> None:
        self._memory = mmap.mmap(-1, _COUNT.size * max(slots, 1))  # MAP_SHARED|ANONYMOUS
        self.finished = 0  # counts of reaped workers (supervisor side)

    def write(self, slot: int, count: int) -> None:
        _COUNT.pack_into(self._memory, slot * _COUNT.size, count)

    def collect(self, slot: int) -> None:
        """A worker of ``slot`` was reaped: keep its count, free the slot."""
        self.finished += _COUNT.unpack_from(self._memory, slot * _COUNT.size)[0]
        self.write(slot, 0)


@dataclass(slots=True)
class _Worker:
    index: int
    started: float
    relay: socket.socket  # the supervisor's end of the change-event channel


class ProcessWorkers:
    """Supervise ``config.process_count`` forked greenlet workers."""

    name = "processes"

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        self._config = config
        self._make_handler = make_handler
        self._feed = feed
        self._workers: dict[int, _Worker] = {}
        self._workers_lock = threading.Lock()  # the watcher thread relays to them
        self._relay_lock = threading.Lock()
        self._stopping = False
        self._restart_delay = 0.0
        self._tally = _Tally(config.process_count)
        # One watcher in the supervisor; its events reach every worker.
        feed.subscribe(self._relay)

    @property
    def requests_served(self) -> int:
        """Requests the workers reaped so far answered (all of them once run returns)."""
        return self._tally.finished

    def _relay(self, event: ChangeEvent) -> None:
        """Send a change event to every worker (called from the watcher thread)."""
        line = encode(event)
        with self._workers_lock:
            relays = [worker.relay for worker in self._workers.values()]
        with self._relay_lock:  # the watcher and the outcome readers relay: whole lines
            for relay in relays:
                with contextlib.suppress(OSError):
                    relay.sendall(line)

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        wake_r, wake_w = socket.socketpair()
        for end in (wake_r, wake_w):
            end.setblocking(False)

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stopping = True

        def on_child(signum: int, frame: FrameType | None) -> None:
            pass  # the wake-up fd does the work

        handlers = {signum: on_stop for signum in stop_signals()}
        handlers[signal.SIGCHLD] = on_child
        # Kept after the loop ends: a second Ctrl-C during the drain changes nothing.
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for index in range(self._config.process_count):
                self._spawn(listener, index, (wake_r, wake_w))
            ready()
            self._supervise(listener, wake_r, wake_w)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self._stop_all()
            listener.close()
            wake_r.close()
            wake_w.close()

    def _supervise(
        self, listener: socket.socket, wake_r: socket.socket, wake_w: socket.socket
    ) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(wake_r, selectors.EVENT_READ)
            while not self._stopping:
                selector.select(timeout=1.0)
                with contextlib.suppress(BlockingIOError):
                    while wake_r.recv(512):
                        pass
                for pid, status in _reap(list(self._workers)):
                    worker = self._forget(pid)
                    if worker is None or self._stopping:
                        continue
                    self._restart(listener, worker, pid, status, (wake_r, wake_w))

    def _forget(self, pid: int) -> _Worker | None:
        with self._workers_lock:
            worker = self._workers.pop(pid, None)
        if worker is not None:
            worker.relay.close()
            self._tally.collect(worker.index)
        return worker

    def _restart(
        self,
        listener: socket.socket,
        worker: _Worker,
        pid: int,
        status: int,
        inherited: tuple[socket.socket, ...],
    ) -> None:
        if time.monotonic() - worker.started < _FAST_EXIT_SECONDS:
            self._restart_delay = min(_MAX_RESTART_DELAY, self._restart_delay * 2 or 0.1)
        else:
            self._restart_delay = 0.0
        if self._restart_delay:
            time.sleep(self._restart_delay)
        if self._stopping:
            return
        new_pid = self._spawn(listener, worker.index, inherited)
        write_line(
            sys.stderr, f"sitepeek: worker {pid} {_describe(status)}; started worker {new_pid}"
        )

    def _spawn(
        self, listener: socket.socket, index: int, inherited: tuple[socket.socket, ...]
    ) -> int:
        parent = os.getpid()
        relay, child_end = socket.socketpair()
        relay.settimeout(1.0)  # a stuck worker must not stall the watcher thread
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the tests
            code = 1
            try:
                # The watcher thread may have held the lock at fork time: start afresh.
                self._workers_lock = threading.Lock()
                siblings = [worker.relay for worker in self._workers.values()]
                for sock in (*inherited, relay, *siblings):
                    sock.close()
                self._feed.reset()
                _child_main(
                    self._config,
                    self._make_handler,
                    listener,
                    parent,
                    child_end,
                    self._feed,
                    lambda count: self._tally.write(index, count),
                )
                code = 0
            except BaseException as exc:
                write_line(sys.stderr, f"sitepeek: worker {os.getpid()} failed: {exc!r}")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_end.close()
        with self._workers_lock:
            self._workers[pid] = _Worker(index, time.monotonic(), relay)
        threading.Thread(
            target=self._read_outcomes, args=(relay,), name="sitepeek-outcomes", daemon=True
        ).start()
        return pid

    def _read_outcomes(self, relay: socket.socket) -> None:
        """What a worker's tabs did for each build, one JSON line each, until it is gone."""
        buffer = b""
        while True:
            try:
                data = relay.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return  # closed by _forget
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                outcome = decode_outcome(line)
                if outcome is not None:
                    self._feed.report(outcome)
                elif isinstance(event := decode(line), PageSeen):
                    self._relay(event)  # every worker holds requests for it
                elif isinstance(event, Touched):
                    self._feed.touch(event)  # the supervisor numbers site versions

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for the graceful shutdown, then SIGKILL."""
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._config.shutdown_grace + 0.2
        while self._workers and time.monotonic() < deadline:
            for pid, _status in _reap(list(self._workers)):
                self._forget(pid)
            time.sleep(0.01)
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self._workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._forget(pid)


def _child_main(
    config: Config,
    make_handler: HandlerFactory,
    listener: socket.socket,
    parent: int,
    relay: socket.socket,
    feed: ChangeFeed,
    report: Callable[[int], None],
) -> None:
    """A worker: the greenlet engine on the shared listener, until told to stop.

    ``report`` publishes the worker's request count to the supervisor: every parent
    check and once more when it has stopped.
    """
    signal.set_wakeup_fd(-1)
    stopping = stop_signals()  # (as the supervisor's: SIGHUP's disposition is inherited)
    for signum in (*stopping, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    _set_parent_death_signal()

    import gevent
    import gevent.event
    import gevent.socket

    from sitepeek.workers.greenlets import serve_until

    stop = gevent.event.Event()
    for signum in stopping:
        gevent.signal_handler(signum, stop.set)

    handlers: list[ConnectionHandler] = []

    def make_counted_handler(io: Io) -> ConnectionHandler:
        handler = make_handler(io)
        handlers.append(handler)
        return handler

    def served() -> int:
        return sum(handler.requests for handler in handlers)

    def watch_parent(stop: gevent.event.Event) -> None:
        while os.getppid() == parent:
            gevent.sleep(_PARENT_CHECK_SECONDS)
            report(served())
        stop.set()

    def read_relay(stop: gevent.event.Event) -> None:
        """Change events from the supervisor's watcher, one JSON line each."""
        channel = gevent.socket.socket(fileno=relay.detach())
        buffer = b""
        while True:
            data = channel.recv(65536)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = decode(line)
                if event is not None and not isinstance(event, Touched):
                    feed.emit(event)

    def report_outcome(outcome: Outcome) -> None:
        # Called in the hub, which must not block: a line the socket cannot take at
        # once is dropped (the supervisor prints the build's line without it).
        with contextlib.suppress(OSError):
            os.write(relay_fd, encode_outcome(outcome))

    def share_page(page: PageSeen | Touched) -> None:
        with contextlib.suppress(OSError):  # (as above)
            os.write(relay_fd, encode(page))

    relay_fd = relay.fileno()
    feed.on_outcome(report_outcome)
    feed.on_page(share_page)
    feed.on_touched(share_page)  # (a Touched is relayed the same way)
    if os.getppid() != parent:
        return
    try:
        serve_until(
            config, make_counted_handler, listener, stop, watchers=(watch_parent, read_relay)
        )
    finally:
        report(served())


def _set_parent_death_signal() -> None:
    """Linux: have the kernel send SIGTERM when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        # The symbols already loaded (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess, in every new worker.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid check still covers it


def _reap(pids: Iterable[int]) -> list[tuple[int, int]]:
    """The workers among ``pids`` that have exited. Only these: waiting for any child
    would steal the exit status of a --build or --run command from its own waiter."""
    reaped = []
    for pid in pids:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append((pid, status))
    return reaped


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
