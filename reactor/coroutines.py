"""Coroutine handlers: `async def on_message` (and on_connect, on_close) on an asyncio loop.

Rules:
- Which callbacks are coroutine functions is decided once, when the Server is built
  (`coroutine_callbacks`).  A handler with none is used as it is: the fast path pays nothing.
- A coroutine handler is handed `bytes`, never a memoryview (views live one loop turn; a
  coroutine outlives it).  On the pygev loop its call is a concurrent.futures.Future at once
  (a deferred reply, kept in order by deferred.py); the coroutine object itself is made and run
  on the asyncio loop, so one cancelled before it started is never made (no "never awaited").
- The asyncio loop is the one running `async with Server(...)`, else one that pygev runs in its
  own thread (uvloop's when uvloop is installed), started with the server, stopped after it.
- Hand-over is batched both ways: the calls of one pygev turn reach the asyncio loop through
  one call_soon_threadsafe; the outcomes of one asyncio iteration come back as one inbox entry
  per pygev loop.  A call is a deferred.Promise (no lock, no condition), not a Future.
- `on_message`'s return value is its reply; `on_connect` is a barrier (the connection's
  messages wait for it); `on_close` runs detached.  At stop, what the closed connections left
  was cancelled with them; detached on_close coroutines get CANCEL_WAIT seconds, then are
  cancelled and awaited (bounded too).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from concurrent.futures import CancelledError
from contextvars import copy_context
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from .deferred import Promise, enter_promise


if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("reactor.coroutines")

CANCEL_WAIT = 5.0            # seconds stop() waits for detached coroutines before cancelling them
_ASYNC_OK = ("on_message", "on_connect", "on_close")


def coroutine_callbacks(handler: Any) -> frozenset[str]:
    """The handler's callbacks that are `async def` (TypeError for one that cannot be)."""
    found = {name for name in _ASYNC_OK
             if inspect.iscoroutinefunction(getattr(handler, name, None))}
    for name in ("on_eof", "on_start", "on_stop"):
        if inspect.iscoroutinefunction(getattr(handler, name, None)):
            raise TypeError(f"handler.{name} must be a plain function (its answer is needed at "
                            f"once); only {', '.join(_ASYNC_OK)} may be async def")
    return frozenset(found)


class AsyncRunner:
    """Runs coroutines for one Server on an asyncio loop: borrowed, or its own thread's."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._own = False
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._batch: list[tuple[Callable[..., Any], tuple, Promise | None]] = []
        self._scheduled = False
        # running task -> its promise; this and the next two: asyncio loop thread only
        self._tasks: dict[asyncio.Task, Promise | None] = {}
        self._outcomes: list[tuple[Promise, Any, BaseException | None]] = []
        self._posting = False

    # ------------------------------------------------------------------------------------
    # the asyncio loop
    # ------------------------------------------------------------------------------------
    def borrow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run coroutines on `loop` (the one running `async with Server(...)`)."""
        self.loop, self._own = loop, False
        self._loop_thread = threading.get_ident()

    def on_its_thread(self) -> bool:
        """True on the thread that runs the asyncio loop (stop() there must not block)."""
        return self.loop is not None and threading.get_ident() == self._loop_thread

    def start(self) -> None:
        """Start an asyncio loop in a thread of its own, unless one was borrowed."""
        if self.loop is not None:
            return
        try:
            import uvloop
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._loop_thread = threading.get_ident()
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self.loop, self._own = loop, True
        self._thread = threading.Thread(target=run, name="reactor-asyncio", daemon=True)
        self._thread.start()
        ready.wait()

    def close(self, wait: float = CANCEL_WAIT) -> None:
        """Finish: let detached coroutines end (at most `wait` s), cancel and await the rest,
        then stop the loop if it is our own.  Called once the pygev loops have stopped."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if self.on_its_thread():
            loop.call_soon(self._cancel_all)     # cannot wait for the loop from inside it
            return
        try:
            done = asyncio.run_coroutine_threadsafe(self._drain(wait), loop)
            done.result(wait + 2.0)
        except Exception as exc:      # the loop stopped under us, or the drain overran
            log.warning("coroutines still running after stop: %s", exc or type(exc).__name__)
        if self._own:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(wait)
        self.loop = None

    async def _drain(self, wait: float) -> None:
        self._run_batch()
        tasks = set(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=wait)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------------------------
    # calls (submit: any thread; the rest on the asyncio loop)
    # ------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], args: tuple, promise: Promise | None) -> None:
        """Run fn(*args) - a coroutine function - on the asyncio loop; its outcome goes to
        `promise` (None: only logged).  A promise cancelled before the batch runs is skipped,
        so its coroutine is never made; cancelled later, its task is cancelled."""
        with self._lock:
            self._batch.append((fn, args, promise))
            if self._scheduled:
                return
            self._scheduled = True
        loop = self.loop
        try:
            if loop is None:
                raise RuntimeError("the server's asyncio loop is not running")
            loop.call_soon_threadsafe(self._run_batch)
        except RuntimeError as exc:          # closed: nothing will ever run these
            with self._lock:
                batch, self._batch = self._batch, []
                self._scheduled = False
            self._outcomes.extend((p, None, exc) for _fn, _args, p in batch if p is not None)
            self._post_outcomes()

    def _run_batch(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
            self._scheduled = False
        create_task = asyncio.get_running_loop().create_task
        tasks = self._tasks
        task_done = self._task_done
        for fn, args, promise in batch:
            try:
                if promise is None:
                    task = create_task(fn(*args))
                elif promise.cancelled:
                    continue                # its connection is gone: never made, never awaited
                else:       # its send()s go before its reply: the task's context says whose
                    task = copy_context().run(_start_as, promise, create_task, fn(*args))
            except BaseException as exc:     # noqa: BLE001 - handed to the connection
                self._outcome(promise, None, exc)
                continue
            tasks[task] = promise
            task.add_done_callback(task_done)
            if promise is not None:
                promise.on_cancel = partial(self._cancel_task, task)
                if promise.cancelled:       # cancelled while the task was being made
                    task.cancel()

    def _cancel_task(self, task: asyncio.Task) -> None:
        """Promise.cancel() from the pygev loop: cancel the task on its own loop."""
        loop = self.loop
        try:
            if loop is not None:
                loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:
            pass

    def _task_done(self, task: asyncio.Task) -> None:
        promise = self._tasks.pop(task, None)
        if promise is not None:
            promise.on_cancel = None        # it refers to the task: no cycle left behind
        if task.cancelled():
            if promise is not None and not promise.cancelled:
                self._outcome(promise, None, CancelledError(f"{task!r} was cancelled"))
            return
        error = task.exception()
        if promise is None:
            if error is not None:
                log.error("%s raised", task.get_coro(), exc_info=error)
            return
        if not promise.cancelled:
            self._outcome(promise, None if error is not None else task.result(), error)

    def _outcome(self, promise: Promise | None, result: Any, error: BaseException | None) -> None:
        """Collect an outcome; this loop iteration's are posted together (`_post_outcomes`)."""
        if promise is None:
            if error is not None:
                log.error("coroutine callback could not start", exc_info=error)
            return
        self._outcomes.append((promise, result, error))
        if not self._posting:
            self._posting = True
            assert self.loop is not None
            self.loop.call_soon(self._post_outcomes)

    def _post_outcomes(self) -> None:
        """One inbox entry per pygev loop for every outcome gathered in this iteration."""
        self._posting = False
        outcomes, self._outcomes = self._outcomes, []
        by_loop: dict[Any, list] = {}
        for item in outcomes:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            loop.call_soon(loop.deferrals.settle_promises, items)


def _start_as(promise: Promise, create_task: Callable[[Any], asyncio.Task], coro: Any) -> asyncio.Task:
    """Inside a fresh context: mark it as `promise`'s, then start the task (which copies it).
    (create_task(context=) would save the second copy, but needs Python 3.11.)"""
    enter_promise(promise)
    return create_task(coro)


def _nothing(*_args: Any) -> None:
    return None


class CoroutineHandler:
    """The user's handler with its `async def` callbacks run by an AsyncRunner (the plain ones
    are the user's own bound methods, called directly)."""

    def __init__(self, handler: Any, runner: AsyncRunner, asynchronous: frozenset[str]) -> None:
        self.user = handler
        submit = runner.submit
        user_message = handler.on_message
        user_connect = getattr(handler, "on_connect", _nothing)
        user_close = getattr(handler, "on_close", _nothing)

        def on_message(conn: Connection, ctx: Any, data: Any) -> Any:
            if type(data) is memoryview:
                data = data.tobytes()         # the coroutine outlives the turn
            promise = Promise(conn.loop)
            submit(user_message, (conn, ctx, data), promise)
            return promise                    # a deferred reply (deferred.py)

        def on_connect(conn: Connection) -> None:
            promise = Promise(conn.loop)
            submit(user_connect, (conn,), promise)
            conn.loop.deferrals.barrier(conn, promise)

        def on_close(conn: Connection, error: BaseException | None) -> None:
            submit(user_close, (conn, error), None)

        self.on_message: Callable[..., Any] = (
            on_message if "on_message" in asynchronous else user_message)
        self.on_connect: Callable[..., Any] = (
            on_connect if "on_connect" in asynchronous else user_connect)
        self.on_close: Callable[..., Any] = on_close if "on_close" in asynchronous else user_close
        if hasattr(handler, "on_eof"):
            self.on_eof: Callable[..., Any] = handler.on_eof

    def __repr__(self) -> str:
        return f"<coroutines of {self.user!r}>"


__all__ = ["CANCEL_WAIT", "AsyncRunner", "CoroutineHandler", "coroutine_callbacks"]
