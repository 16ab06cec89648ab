"""Pre-fork workers: N processes serve one address; the parent supervises them.

`Server.start()` runs a `WorkerPool` when `workers > 1`.  The parent then:

- binds the address once to learn it (port 0 becomes a real port).  For TCP it keeps a bound but
  *non-listening* SO_REUSEPORT socket to reserve the port, closes its listener, and each worker
  binds its own SO_REUSEPORT listener, so the kernel spreads new connections over the workers.
  A unix socket has no SO_REUSEPORT: the parent keeps its listener and the workers inherit it
  and accept from the shared queue;
- forks the workers; each one builds its own Server from the parent's options
  (`server.worker_copy()`) and serves it (its `num_loops` loops) until told to stop;
- returns from start-up (`with`, or the ready point of `start()`) only once every worker listens:
  each binds its listener, then sends its first stats report, which the parent waits for;
- restarts a worker that dies (with a growing delay if it keeps dying at once), counting restarts;
- turns SIGTERM / SIGINT (when it runs on the main thread) or `WorkerPool.stop()` into a graceful
  stop: SIGTERM to every worker, which stops its server (flushing output for at most the stop
  timeout), then SIGKILL for any worker still alive after that timeout plus a grace period.

Workers ignore SIGINT (a terminal's Ctrl+C reaches the whole process group; the parent alone
decides), and get SIGTERM if the supervising thread dies (Linux `PR_SET_PDEATHSIG`).  Each
worker pushes its `stats()` to the parent over a pipe (see reactor.metrics), so one scrape of
the parent's metrics address covers all workers.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import mmap
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .stats import Stats, add_stats, empty_stats
from ._native import lib

log = logging.getLogger("reactor.workers")

#: Seconds between two stats reports from a worker to the parent.
PUBLISH_INTERVAL = 0.25
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: Seconds a worker gets, beyond the stop timeout, to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: With stop(None) a worker still flushing after this many seconds (+ STOP_GRACE) is killed.
UNBOUNDED_STOP_LIMIT = 30.0
_MAX_RESTART_DELAY = 5.0
#: Seconds start() waits for every worker's listener before it goes on anyway.
STARTUP_LIMIT = 10.0


@dataclass
class _Worker:
    """Parent-side record of one worker slot and its current process."""

    slot: int
    pid: int = 0
    pidfd: int = -1
    stats_fd: int = -1
    stats_buf: bytearray = field(default_factory=bytearray)
    started_at: float = 0.0
    restart_delay: float = 0.0
    restart_at: float | None = None  # set while the slot waits to be refilled


class WorkerPool:
    """Forks, watches and stops the worker processes of one Server (lives in the parent)."""

    def __init__(self, server: Any, count: int, on_signal: Any = None):
        if count < 1:
            raise ValueError("workers must be >= 1")
        self.server = server
        self._on_signal_stop = on_signal    # tells the server a signal asked for the stop
        self.count = count
        self.restarts = 0
        self._workers = [_Worker(slot) for slot in range(count)]
        self._stopping = False
        self._stop_timeout: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Shared with the children (anonymous MAP_SHARED survives fork): the stop timeout,
        # written before SIGTERM so a worker's graceful stop uses the parent's deadline.
        self._shared = mmap.mmap(-1, 8)
        self._shared[:8] = struct.pack("d", math.nan)  # a SIGTERM from elsewhere: stop(None)
        self._sel = selectors.DefaultSelector()
        self._reservation: socket.socket | None = None
        self._lock = threading.Lock()
        self._latest: dict[int, Stats] = {}
        self._retired = empty_stats()

    # ---- public, any thread -------------------------------------------------------------
    @property
    def alive_count(self) -> int:
        """Workers currently running."""
        return sum(1 for w in self._workers if w.pid)

    @property
    def pids(self) -> list[int]:
        """PIDs of the running workers (a restarted worker gets a new PID)."""
        return [w.pid for w in self._workers if w.pid]

    def stats(self) -> Stats:
        """Sum of every worker's latest `stats()`, plus the counters of workers that died."""
        total = empty_stats()
        with self._lock:
            add_stats(total, self._retired)
            for part in self._latest.values():
                add_stats(total, part)
        return total

    def stop(self, timeout: float | None = None) -> None:
        """Ask for a graceful stop of all workers; thread-safe and signal-safe (sets a flag)."""
        self._stop_timeout = timeout
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # ---- supervision (the thread that called run) -----------------------------------------
    def run(self, on_ready: Any = None) -> None:
        """Bind, fork the workers, supervise them until stop(), then stop and reap them all."""
        previous = self._install_signal_handlers()
        try:
            self._bind()
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            for worker in self._workers:
                self._spawn(worker)
            self._await_listening(STARTUP_LIMIT)
            log.info("%d workers serving %s", self.count, self.server.address)
            if on_ready is not None:
                on_ready()
            while not self._stopping:
                self._turn(self._next_timeout())
                self._refill_due_slots()
            self._stop_all()
        finally:
            self._restore_signal_handlers(previous)
            self.close()

    def _bind(self) -> None:
        server = self.server
        unix = server.network == "unix"
        address = server.bind()   # SO_REUSEPORT for TCP (workers > 1 forces it on)
        if unix:
            return  # keep the listener: the workers inherit it
        # TCP: reserve the port with a bound, non-listening SO_REUSEPORT socket (gets no
        # connections), then drop our listener so only the workers accept.
        family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        self._reservation = sock
        server.close_listeners()    # workers bind the real port (server.address), not port 0 again

    def _await_listening(self, limit: float) -> None:
        """Until every worker has said that it listens (its first stats report, written once
        its listener is bound) or has died: the port refuses no connect once start() or `with`
        returned.  Bounded: a worker that takes longer only gets a warning."""
        deadline = time.monotonic() + limit
        while not self._stopping:
            with self._lock:
                waiting = [w.slot for w in self._workers if w.pid and w.slot not in self._latest]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("worker(s) %s not listening after %.0f s; serving without waiting",
                            ", ".join(map(str, waiting)), limit)
                return
            self._turn(remaining)

    def _next_timeout(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        timeout = None if not due else max(0.0, min(due) - time.monotonic())
        if not hasattr(os, "pidfd_open"):  # no pidfds: poll for dead children
            timeout = 0.2 if timeout is None else min(timeout, 0.2)
        return timeout

    def _turn(self, timeout: float | None) -> None:
        for key, _ in self._sel.select(timeout):
            if key.data is None:  # the wake-up pipe
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
                continue
            kind, worker = key.data
            if kind == "stats":
                self._read_stats(worker)
            else:
                self._reap(worker, block=False)
        if not hasattr(os, "pidfd_open"):
            for worker in self._workers:
                if worker.pid:
                    self._reap(worker, block=False)

    def _refill_due_slots(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self._stopping:
                worker.restart_at = None
                self.restarts += 1
                self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        stats_r, stats_w = os.pipe()
        parent_fds = self._parent_only_fds() + [stats_r]
        # Until the child has its own handlers, a SIGTERM / SIGINT would run the parent's (and be
        # lost): both stay blocked across the fork and the child unblocks them once it is ready.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:  # child: never returns
            code = 1
            try:
                os.close(stats_r)
                _close_quietly(parent_fds)
                _WorkerChild(self.server, worker.slot, stats_w, self._shared).run()
                code = 0
            except BaseException:  # the child must always reach os._exit
                log.exception("worker %d failed", worker.slot)
            finally:
                _flush_logs()
                os._exit(code)
        os.close(stats_w)
        os.set_blocking(stats_r, False)
        worker.pid, worker.stats_fd, worker.started_at = pid, stats_r, time.monotonic()
        worker.stats_buf.clear()
        self._sel.register(stats_r, selectors.EVENT_READ, ("stats", worker))
        if hasattr(os, "pidfd_open"):
            worker.pidfd = os.pidfd_open(pid)
            self._sel.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        log.debug("worker %d started, pid %d", worker.slot, pid)

    def _parent_only_fds(self) -> list[int]:
        fds = [self._wake_r, self._wake_w, self._sel.fileno()]
        if self._reservation is not None:
            fds.append(self._reservation.fileno())
        for w in self._workers:
            fds.extend(fd for fd in (w.pidfd, w.stats_fd) if fd >= 0)
        return fds

    def _read_stats(self, worker: _Worker) -> None:
        """Take what a worker sent: newline-separated JSON stats; keep the newest complete one."""
        fd = worker.stats_fd
        if fd < 0:
            return
        eof = False
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    eof = True
                    break
                worker.stats_buf += chunk
        except BlockingIOError:
            pass
        lines = worker.stats_buf.split(b"\n")
        worker.stats_buf[:] = lines.pop()
        for line in reversed(lines):
            if line:
                try:
                    stats = json.loads(line)
                except ValueError:
                    log.warning("worker %d sent unreadable stats", worker.slot)
                    continue
                with self._lock:
                    self._latest[worker.slot] = stats
                break
        if eof:
            self._sel.unregister(fd)
            os.close(fd)
            worker.stats_fd = -1

    def _reap(self, worker: _Worker, *, block: bool) -> bool:
        """Collect a worker that exited; schedule its restart unless stopping.  True if reaped."""
        if not worker.pid:
            return True
        try:
            pid, status = os.waitpid(worker.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, 0
        if pid == 0:
            return False
        self._forget(worker)
        lived = time.monotonic() - worker.started_at
        if self._stopping:
            log.debug("worker %d (pid %d) stopped: %s", worker.slot, pid, _describe(status))
            return True
        log.warning("worker %d (pid %d) exited (%s); restarting", worker.slot, pid, _describe(status))
        worker.restart_delay = (
            min(max(worker.restart_delay * 2, 0.1), _MAX_RESTART_DELAY) if lived < 1.0 else 0.0
        )
        worker.restart_at = time.monotonic() + worker.restart_delay
        return True

    def _forget(self, worker: _Worker) -> None:
        """Drop a dead worker's fds; fold its last counters into the retired totals."""
        if worker.stats_fd >= 0:
            self._read_stats(worker)  # the writer is gone: this reads to EOF and closes
            if worker.stats_fd >= 0:
                self._sel.unregister(worker.stats_fd)
                os.close(worker.stats_fd)
                worker.stats_fd = -1
        if worker.pidfd >= 0:
            self._sel.unregister(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = -1
        with self._lock:
            last = self._latest.pop(worker.slot, None)
            if last is not None:
                add_stats(self._retired, last, counters_only=True)
        worker.pid = 0

    def _stop_all(self) -> None:
        timeout = self._stop_timeout
        # NaN tells a worker "no timeout" (stop(None): flush while the peer makes progress).
        self._shared[:8] = struct.pack("d", math.nan if timeout is None else max(0.0, timeout))
        for worker in self._workers:
            worker.restart_at = None
            if worker.pid:
                _kill_quietly(worker.pid, signal.SIGTERM)
        limit = UNBOUNDED_STOP_LIMIT if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit + STOP_GRACE
        while any(w.pid for w in self._workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for worker in self._workers:
                    if worker.pid:
                        log.warning("worker %d (pid %d) did not stop in time; killing",
                                    worker.slot, worker.pid)
                        _kill_quietly(worker.pid, signal.SIGKILL)
                        self._reap(worker, block=True)
                break
            self._turn(min(remaining, 0.2) if not hasattr(os, "pidfd_open") else remaining)

    def close(self) -> None:
        """Release what the pool holds (run() does this when it ends)."""
        self._stopping = True
        for worker in self._workers:  # only non-empty if run() failed half-way
            if worker.pid:
                _kill_quietly(worker.pid, signal.SIGKILL)
                self._reap(worker, block=True)
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        self._sel.close()
        _close_quietly([self._wake_r, self._wake_w])
        self._wake_r = self._wake_w = -1

    def _install_signal_handlers(self) -> dict[int, Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Not server.stop(): it would wait, on this very thread, for the supervision to end.
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        if self._on_signal_stop is not None:
            self._on_signal_stop()
        self.stop()

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any] | None) -> None:
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)


class _WorkerChild:
    """What a forked worker does: serve, publish stats, stop on SIGTERM."""

    def __init__(self, server: Any, slot: int, stats_fd: int, shared: mmap.mmap):
        self.parent = server
        self.server: Any = None
        self.slot = slot
        self.stats_fd = stats_fd
        self.shared = shared
        self.done = threading.Event()

    def run(self) -> None:
        # A Server of its own, from the parent's options: nothing of the parent's state (locks
        # another parent thread may have held at fork time, metrics, the unix path) comes along.
        server = self.server = self.parent.worker_copy()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)   # blocked by _spawn: a
        # SIGTERM that came meanwhile is handled now, and stops this server before it serves
        parent = os.getppid()
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            return
        publisher: threading.Thread | None = None
        try:
            server.bind()             # listening from here: the first report tells the parent
            self._publish()
            publisher = threading.Thread(target=self._publish_loop, name="reactor-stats", daemon=True)
            publisher.start()
            server.start()
        finally:
            self.done.set()
            if publisher is not None:
                publisher.join(timeout=1.0)
            self._publish()
            os.close(self.stats_fd)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        timeout: float | None = struct.unpack("d", self.shared[:8])[0]
        if timeout is not None and math.isnan(timeout):
            timeout = None
        # stop() from a helper thread: safe whether or not this thread runs a loop.
        threading.Thread(target=self.server.stop, args=(timeout,), name="reactor-stop", daemon=True).start()

    def _publish_loop(self) -> None:
        while not self.done.wait(PUBLISH_INTERVAL):
            if not self._publish():
                return

    def _publish(self) -> bool:
        try:
            stats = self.server.stats() if self.server is not None else {}
            line = json.dumps(stats, separators=(",", ":")).encode() + b"\n"
            os.write(self.stats_fd, line)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                log.warning("worker %d: cannot publish stats: %s", self.slot, exc)
            return False
        except Exception:  # stats must never take a worker down
            log.exception("worker %d: stats() failed", self.slot)
            return False


def _set_parent_death_signal(signum: int) -> None:
    """Linux: have the kernel send `signum` when the forking thread exits (no-op elsewhere)."""
    lib.pg_parent_death_signal(int(signum))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _kill_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _close_quietly(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _flush_logs() -> None:
    # A dying child's streams may already be closed: that is not worth a traceback.
    for stream in (sys.stdout, sys.stderr, *logging.getLogger().handlers):
        with contextlib.suppress(Exception):
            stream.flush()

