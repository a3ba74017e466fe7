"""Thread model: one process, a real OS thread per connection, bounded.

No gevent anywhere in this model. At most ``max_connections`` connections are served
at once; past that, the accept loop waits and new clients queue in the kernel's
listen backlog (they are served as soon as a slot frees up, never dropped by us).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import queue
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from sitepeek.changes import ChangeFeed
from sitepeek.config import Config
from sitepeek.workers.base import AcceptBackoff, ConnectionHandler, HandlerFactory

T = TypeVar("T")

_ACCEPT_BATCH = 64
# A busy connection whose request began less than this ago may be done already: the
# thread that sent its answer is preempted before it marks the connection idle, while
# its client has moved on. Reclaiming waits for it (see ConnectionTable.reclaim_idle).
JUST_ANSWERED = 0.1
# Threads mostly wait on sockets; a small stack keeps 1,000 of them cheap.
_THREAD_STACK = 512 * 1024


class ThreadChannel:
    """A thread-safe queue."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, item: object) -> None:
        self._queue.put(item)

    def get(self, timeout: float) -> object | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class ThreadIo:
    """Blocking primitives for OS threads."""

    def raw_socket(self, sock: socket.socket) -> None:
        return None  # a plain socket is the OS socket already

    def read_wait(self, fd: int) -> None:
        return None  # a thread's recv blocks by itself

    def write_wait(self, fd: int) -> None:
        return None

    def offload(self, work: Callable[[], T]) -> T:
        return work()  # already in its own thread

    def spawn(self, task: Callable[[], None]) -> None:
        threading.Thread(target=task, name="sitepeek-task", daemon=True).start()

    def channel(self) -> ThreadChannel:
        return ThreadChannel()

    def signal(self) -> threading.Event:
        return threading.Event()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        callback()  # every primitive of this model is thread-safe


class ThreadWorkers:
    """Serve every connection in its own OS thread."""

    name = "threads"

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        # The handler subscribes to ``feed`` itself: one process, nothing to relay.
        self._config = config
        self._make_handler = make_handler
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        handler = self._make_handler(ThreadIo())
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        stopping = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        # Kept after the loop ends: a second Ctrl-C during the drain changes nothing.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            ready()
            threading.stack_size(_THREAD_STACK)
            self._accept_loop(listener, wake_r, stopping, handler)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            listener.close()
            self._drain(handler)
            wake_r.close()
            wake_w.close()

    def _accept_loop(
        self,
        listener: socket.socket,
        wake: socket.socket,
        stopping: threading.Event,
        handler: ConnectionHandler,
    ) -> None:
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        backoff = AcceptBackoff()
        with selector:
            while not stopping.is_set():
                ready = {key.fileobj for key, _ in selector.select()}
                if wake in ready:
                    _drain_wakeups(wake)
                if listener not in ready:
                    continue
                # Accept in batches: after a connection storm the backlog drains at once.
                for index in range(_ACCEPT_BATCH):
                    # Reclaim only for a client known to be waiting (the first).
                    if index and not self._slots.acquire(blocking=False):
                        break
                    if not index and not self._take_slot(handler, stopping):
                        break
                    try:
                        client, peer = listener.accept()
                    except BlockingIOError:
                        self._slots.release()
                        break
                    except OSError as exc:
                        self._slots.release()
                        delay = backoff.failed(exc)
                        if delay is None:
                            continue
                        time.sleep(delay)
                        break
                    backoff.succeeded()
                    client.setblocking(True)
                    self._start(handler, client, peer)

    def _take_slot(self, handler: ConnectionHandler, stopping: threading.Event) -> bool:
        """A connection slot for the client that is waiting; False when stopping.

        At max_connections, close the least recently used idle connection; when every
        connection is busy, wait for a slot while the client waits in the backlog.
        """
        while not stopping.is_set():
            if self._slots.acquire(blocking=False):
                return True
            # A connection may turn idle a moment later: try again while waiting.
            handler.reclaim_idle(JUST_ANSWERED)
            if self._slots.acquire(timeout=0.05):
                return True
        return False

    def _start(self, handler: ConnectionHandler, client: socket.socket, peer: object) -> None:
        def run() -> None:
            try:
                handler.serve(client, peer)
            finally:
                with self._threads_lock:
                    self._threads.discard(thread)
                    last = not self._threads
                self._slots.release()
                if last:
                    _release_free_memory()

        thread = threading.Thread(target=run, name="sitepeek-conn", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()

    def _drain(self, handler: ConnectionHandler) -> None:
        handler.begin_shutdown()
        deadline = time.monotonic() + self._config.shutdown_grace
        if not self._join_all(deadline):
            handler.abort_all()
            self._join_all(time.monotonic() + 0.2)
        handler.close()

    def _join_all(self, deadline: float) -> bool:
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)


def _drain_wakeups(wake: socket.socket) -> None:
    try:
        while wake.recv(512):
            pass
    except BlockingIOError:
        pass


def _release_free_memory() -> None:
    """Give freed heap back to the OS once the last connection thread ends.

    glibc keeps a malloc arena per thread; after a burst of 1,000 connections it would
    hold tens of MiB it no longer uses. malloc_trim returns them (Linux/glibc only).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
