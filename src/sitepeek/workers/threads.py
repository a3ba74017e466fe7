"""Thread model: one process, a selector thread and a bounded pool of worker threads.

No gevent anywhere in this model. The way gunicorn's ``gthread`` worker does it:

- the selector thread (the main thread: epoll, or :mod:`selectors` without it) owns the
  listening socket and every idle keep-alive connection. When one has bytes, it reads
  them without blocking (MSG_DONTWAIT); a request the hot cache answers is answered
  right there in one non-blocking send, exactly as the greenlet model answers it in
  its event loop (see Handler.adopt), with no hand-off to any thread (over TLS too:
  the selector thread decrypts the request and encrypts the answer);
- anything else is handed to a pool of ``--threads`` reused worker threads, queued
  first ready, first served while all of them are busy (never dropped). A worker
  answers, then hands the connection back to the selector: an idle connection never
  holds a thread, a large file or a slow client holds one only while it is written;
- deadlines (idle, request head, send) are kept by the connection table's reaper, one
  periodic sweep, not a timer per socket;
- a reload WebSocket or a proxied exchange may last long: its thread leaves the pool
  (Io.detach), so it never holds a pool slot;
- a TLS handshake runs in a thread of its own (Io.spawn), never a pool thread, so
  clients stalling in handshakes cannot starve the pool; the thread ends once the
  connection waits in the selector.

At ``max_connections`` the idle connection used least recently is closed for a
newcomer known to be waiting, and the selector stops accepting for a moment (50 ms)
before it looks again; when every connection is busy, newcomers wait in the kernel's
listen backlog meanwhile, never dropped.
"""

from __future__ import annotations

import contextlib
import queue
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from sitepeek.changes import ChangeFeed
from sitepeek.config import Config
from sitepeek.console import write_line
from sitepeek.workers.base import AcceptBackoff, ConnectionHandler, HandlerFactory, stop_signals

T = TypeVar("T")

_ACCEPT_BATCH = 64
# A busy connection whose request began less than this ago may be done already: the
# thread that sent its answer is preempted before it marks the connection idle, while
# its client has moved on. Reclaiming waits for it (see ConnectionTable.reclaim_idle).
JUST_ANSWERED = 0.1
# Threads mostly wait on sockets; a small stack keeps them cheap.
_THREAD_STACK = 512 * 1024
# How often the selector looks again while it is not accepting (at max_connections)
# or shutting down.
_TICK = 0.05
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


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


class DontWaitSocket:
    """A blocking socket's non-blocking side: recv and send with MSG_DONTWAIT.

    The socket stays blocking for the worker thread that writes a whole answer
    (sendall, sendfile), while the selector thread reads and answers without waiting.
    """

    __slots__ = ("_fd", "_recv", "_send")

    def __init__(self, sock: socket.socket) -> None:
        self._recv = sock.recv
        self._send = sock.send
        self._fd = sock.fileno()

    def recv(self, size: int, /) -> bytes:
        return self._recv(size, _DONTWAIT)

    def send(self, data: bytes, /) -> int:
        return self._send(data, _DONTWAIT)

    def fileno(self) -> int:
        return self._fd


class Pool:
    """A bounded set of reused worker threads, started as the work needs them.

    Tasks queue first come, first served while every thread is busy; none is dropped.
    A thread is started whenever more tasks wait than threads are free, so a task never
    waits behind a busy one while the pool has room.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._queued = 0  # submitted, not yet taken by a thread
        self._busy = 0  # threads running a task
        self._local = threading.local()

    @property
    def size(self) -> int:
        return self._size

    @property
    def thread_count(self) -> int:
        """Threads in the pool now (started lazily, at most ``size``)."""
        return len(self._threads)

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._queued += 1
            threads = self._threads
            start = len(threads) < self._size and len(threads) - self._busy < self._queued
            if start:
                thread = threading.Thread(target=self._work, name="sitepeek-worker", daemon=True)
                threads.add(thread)
        self._tasks.put(task)
        if start:
            thread.start()

    def detach(self) -> None:
        """Take the calling worker thread out of the pool for the rest of its task."""
        local = self._local
        if not getattr(local, "pooled", False):
            return
        local.pooled = False
        with self._lock:
            self._threads.discard(threading.current_thread())
            self._busy -= 1
        # A connection may be waiting in the queue for the slot this thread gave up.
        self.submit(_nothing)

    def stop(self) -> None:
        """Let every idle thread end (busy ones end after their task)."""
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._tasks.put(None)

    def _work(self) -> None:
        local = self._local
        tasks = self._tasks
        lock = self._lock
        while True:
            task = tasks.get()
            if task is None:
                break
            with lock:
                self._queued -= 1
                self._busy += 1
            local.pooled = True
            try:
                task()
            except Exception as exc:  # a bug must cost one connection, never a worker
                write_line(sys.stderr, f"sitepeek: internal error (worker): {exc!r}")
            if not local.pooled:
                return  # detached: no longer counted, its slot is free already
            with lock:
                self._busy -= 1
        with lock:
            self._threads.discard(threading.current_thread())


def _nothing() -> None:
    return None


class SelectorWait:
    """A connection's readiness, watched by the selector thread (threads model FdWait).

    ``notify(callback)`` registers the descriptor (level-triggered): the selector thread
    calls ``callback`` while it stays readable and registered. ``wait`` blocks the
    calling worker thread instead (a request head arriving in pieces).
    """

    __slots__ = ("_active", "_fd", "_loop")

    def __init__(self, loop: SelectorLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._active = False

    def wait(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.poll()  # the reaper's shutdown ends it at the connection's deadline

    def notify(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            if self._active:
                self._active = False
                self._loop.unwatch(self._fd)
        elif not self._active:
            self._active = True
            self._loop.watch(self._fd, callback)

    def close(self) -> None:
        self.notify(None)


class SelectorLoop:
    """The selector thread's state: what it watches, its wake-up socket, the pool.

    Every watched descriptor has a callback, run in the selector thread when it is
    readable (level-triggered). epoll is used directly where there is one: the
    :mod:`selectors` wrapper (its fallback elsewhere) builds a key and a tuple per
    event, about a microsecond of Python for every request the selector answers.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._callbacks: dict[int, Callable[[], None]] = {}
        make_epoll = getattr(select, "epoll", None)
        self._epoll: select.epoll | None = make_epoll() if make_epoll is not None else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.watch(self.wake_r.fileno(), self._drain_wakeups)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        # (From any thread: epoll_ctl is thread-safe and the table is a dict; a
        # registration made during a wait counts from the next one.)
        self._callbacks[fd] = callback
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._selector is not None
            self._selector.register(fd, selectors.EVENT_READ)

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._selector is not None
                self._selector.unregister(fd)

    def run_once(self, timeout: float | None) -> None:
        """Wait at most ``timeout`` seconds (None: no limit); run the ready callbacks."""
        callbacks = self._callbacks
        if self._epoll is not None:
            ready = [fd for fd, _ in self._epoll.poll(-1 if timeout is None else timeout)]
        else:
            assert self._selector is not None
            ready = [key.fd for key, _ in self._selector.select(timeout)]
        for fd in ready:
            callback = callbacks.get(fd)
            if callback is not None:  # (None: unwatched by an earlier callback)
                callback()

    def _drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self.wake_r.close()
        self.wake_w.close()


class ThreadIo:
    """Blocking primitives for OS threads.

    Without a :class:`SelectorLoop` (a handler made outside the threads model's run),
    connections are not adopted by a selector and every task is a thread of its own.
    """

    def __init__(self, loop: SelectorLoop | None = None) -> None:
        self._loop = loop
        self.pooled = loop is not None

    def raw_socket(self, sock: socket.socket) -> DontWaitSocket | None:
        if self._loop is None or not _DONTWAIT:
            return None
        return DontWaitSocket(sock)

    def read_wait(self, fd: int) -> SelectorWait | None:
        if self._loop is None:
            return None  # a thread's recv blocks by itself
        return SelectorWait(self._loop, fd)

    def write_wait(self, fd: int) -> None:
        return None  # a worker thread's send blocks by itself

    def offload(self, work: Callable[[], T]) -> T:
        return work()  # already in a thread of its own

    def spawn(self, task: Callable[[], None]) -> None:
        threading.Thread(target=task, name="sitepeek-task", daemon=True).start()

    def dispatch(self, task: Callable[[], None]) -> None:
        if self._loop is None:
            self.spawn(task)
        else:
            self._loop.pool.submit(task)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.pool.detach()

    def channel(self) -> ThreadChannel:
        return ThreadChannel()

    def signal(self) -> threading.Event:
        return threading.Event()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        callback()  # every primitive of this model is thread-safe


class ThreadWorkers:
    """Serve with a selector thread and a pool of ``config.thread_count`` threads."""

    name = "threads"

    def __init__(self, config: Config, make_handler: HandlerFactory, feed: ChangeFeed) -> None:
        # The handler subscribes to ``feed`` itself: one process, nothing to relay.
        self._config = config
        self._make_handler = make_handler

    def run(self, listener: socket.socket, ready: Callable[[], None]) -> None:
        threading.stack_size(_THREAD_STACK)
        pool = Pool(self._config.thread_count)
        loop = SelectorLoop(pool)
        handler = self._make_handler(ThreadIo(loop))
        stopping = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        # Kept after the loop ends: a second Ctrl-C during the drain changes nothing.
        for signum in stop_signals():
            signal.signal(signum, on_signal)
        old_wakeup = signal.set_wakeup_fd(loop.wake_w.fileno(), warn_on_full_buffer=False)
        try:
            ready()
            self._serve(listener, loop, stopping, handler)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            listener.close()
            self._drain(loop, handler)
            pool.stop()
            loop.close()

    def _serve(
        self,
        listener: socket.socket,
        loop: SelectorLoop,
        stopping: threading.Event,
        handler: ConnectionHandler,
    ) -> None:
        listener.setblocking(False)
        fd = listener.fileno()
        limit = self._config.max_connections
        backoff = AcceptBackoff()
        resume_at = 0.0

        def accept() -> None:
            nonlocal resume_at
            delay = self._accept(listener, handler, limit, backoff)
            if delay is not None:
                loop.unwatch(fd)
                resume_at = time.monotonic() + delay

        loop.watch(fd, accept)
        try:
            while not stopping.is_set():
                timeout = None
                if resume_at:
                    timeout = resume_at - time.monotonic()
                    if timeout <= 0:
                        loop.watch(fd, accept)
                        resume_at = 0.0
                        timeout = None
                loop.run_once(timeout)
        finally:
            loop.unwatch(fd)  # (before it closes: its number is reused)

    @staticmethod
    def _accept(
        listener: socket.socket, handler: ConnectionHandler, limit: int, backoff: AcceptBackoff
    ) -> float | None:
        """Accept a batch (a connection storm drains at once); None to go on accepting,
        else stop accepting for that many seconds.

        At max_connections, close the least recently used idle connection for a client
        known to be waiting (the first of the batch), then look again in a moment; when
        every connection is busy, newcomers wait in the listen backlog meanwhile.
        """
        for index in range(_ACCEPT_BATCH):
            if handler.connection_count >= limit:
                if not index:
                    # A connection may turn idle a moment later: the next look retries.
                    handler.reclaim_idle(JUST_ANSWERED)
                return _TICK
            try:
                client, peer = listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                delay = backoff.failed(exc)
                if delay is None:
                    continue
                return delay
            backoff.succeeded()
            client.setblocking(True)
            handler.adopt(client, peer)  # answers a hot request here, or parks or queues it
        return None

    def _drain(self, loop: SelectorLoop, handler: ConnectionHandler) -> None:
        """Close idle connections now; give in-flight responses a grace period.

        The selector keeps running meanwhile: a parked connection shut down by
        begin_shutdown turns readable and is closed by its callback.
        """
        handler.begin_shutdown()
        if not self._run_until_closed(loop, handler, self._config.shutdown_grace):
            handler.abort_all()
            self._run_until_closed(loop, handler, 0.2)
        handler.close()

    @staticmethod
    def _run_until_closed(loop: SelectorLoop, handler: ConnectionHandler, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while handler.connection_count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            loop.run_once(min(left, _TICK))
        return True
