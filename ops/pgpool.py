"""The one place where trio and asyncio meet: an asyncpg pool on an asyncio loop in its own thread.

asyncpg only runs on asyncio; the services are trio. Bridging every call with a thread hop is slow
(measured 1,100-8,100 calls/s), so work crosses between the loops in batches:

* trio side, ``await pool.run(fn, *args)``: appends the request to an inbox and, only if the asyncio
  side has not already been woken, wakes it once (``call_soon_threadsafe``). The calling task then
  sleeps without a thread of its own (``trio.lowlevel.wait_task_rescheduled``).
* asyncio side: each wake-up drains the whole inbox and starts one task per request, each running
  ``await fn(connection, *args)`` on a pooled connection.
* results go back the same way: finished requests are appended to an outbox and the trio loop is woken
  once per drain (``TrioToken.run_sync_soon``), which reschedules every finished task in one go.

So N concurrent calls cost about two cross-thread wake-ups, not 2N. ``fn`` is an ``async def`` that
takes an asyncpg connection first; it runs on the asyncio loop, so it must not touch trio objects.
A trio caller that is cancelled while its call runs is not interrupted: the database work finishes
(a commit is never left in doubt) and the cancellation is delivered when the result arrives.

Plain synchronous code (the CLI, tests) can use ``pool.call(fn, *args)``, which blocks.

A call's result is handed back before its connection goes back to the pool, and connections are not
reset on release (asyncpg's default reset is a round trip per call): ``fn`` must leave no session
state behind (no plain ``SET``, ``LISTEN``, session advisory lock or held cursor; ``SET LOCAL`` and
``pg_advisory_xact_lock`` inside a transaction are fine). A transaction left open is rolled back.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import asyncpg
import outcome
import trio
from prometheus_client.core import REGISTRY, CounterMetricFamily

from ops.db import DatabaseUnavailable
from ops.logs import asyncio_exception_handler

T = TypeVar("T")
Work = Callable[..., Awaitable[Any]]


async def _keep_session(_conn: Any) -> None:
    """Nothing to reset (see the module docstring); asyncpg still rolls back a transaction left open."""


# By default asyncpg sends a reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) to the server
# on every release: one more round trip and server wake-up per call. The work functions leave no session
# state, so the pool skips it where asyncpg (>= 0.30) lets it.
_NO_RESET: dict[str, Any] = (
    {"reset": _keep_session} if "reset" in inspect.signature(asyncpg.create_pool).parameters else {}
)


class _Call:
    __slots__ = ("args", "fn", "result", "task")

    def __init__(self, fn: Work, args: tuple[Any, ...], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.args = args
        self.task = task
        self.result: outcome.Outcome[Any] | None = None


# Errors that say the database could not be reached or the connection was lost (class 08, class 57:
# shutdown, crash, starting up; a socket error): an operation that fails so may or may not have
# committed, and the database may come back. Not a bug in the statement.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,  # a connection broken mid-operation ("another operation")
    # A write on a member still in recovery: behind HAProxy, during a failover, Patroni's /primary says
    # 200 a moment before the promotion ends. The services only write outside read-only transactions.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def _lost(conn: Any) -> bool:
    """Whether ``fn``'s pooled connection is gone: asyncpg detaches the proxy of a connection that
    dropped (then every call on it raises InterfaceError), or the connection itself says it is closed."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _as_unavailable(exc: BaseException, conn: Any) -> BaseException:
    """An error raised while the connection went away is a lost database whatever its type (a work
    function's own handler may fail on the dead connection: "released back to the pool"): its outcome
    is unknown, and the caller must treat it as such (decide again, never answer "nothing posted")."""
    if isinstance(exc, Exception) and not isinstance(exc, UNAVAILABLE) and _lost(conn):
        unavailable = DatabaseUnavailable(f"connection lost: {exc!r}")
        unavailable.__cause__ = exc
        return unavailable
    return exc


class PgPool:
    """An asyncpg pool owned by a private asyncio loop thread; see the module docstring.

    ``server_settings``: PostgreSQL settings for every connection (the host forces custom plans: its
    batch queries take arrays whose size varies, and a generic plan made while a table was small stays a
    sequential scan when the table has grown).

    ``role``: after connecting, ``SET ROLE`` to it when the role exists and the user may take it (the
    host uses ``payswitch_app``, which may not UPDATE or DELETE the ledger); otherwise the connection
    keeps the connecting user.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        role: str | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.server_settings = server_settings
        self.min_size = min_size
        self.max_size = max_size
        self.role = role
        self.role_active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inbox: deque[_Call] = deque()
        self._inbox_woken = False
        self._outbox: deque[_Call] = deque()
        self._outbox_woken = False
        self._token: trio.lowlevel.TrioToken | None = None
        # What the bridge costs, for bench/pgpool.py and /metrics: calls from trio, and the cross-thread
        # wake-ups they took each way (a wake-up is a system call and a thread switch; calls are not).
        self.calls = 0
        self.wakeups_to_asyncio = 0
        self.wakeups_to_trio = 0
        _POOLS.add(self)

    def stats(self) -> dict[str, int]:
        """Calls from trio so far and the cross-thread wake-ups they cost, each direction."""
        return {
            "calls": self.calls,
            "wakeups_to_asyncio": self.wakeups_to_asyncio,
            "wakeups_to_trio": self.wakeups_to_trio,
        }

    # -- lifecycle (any thread) -----------------------------------------------------------------
    def start(self) -> PgPool:
        """Start the loop thread and open the pool; raise DatabaseUnavailable if that fails."""
        if self._thread is not None:
            return self
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="pgpool", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._loop = None
        self._thread = None

    def __enter__(self) -> PgPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trio side ------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(conn, *args)`` on the asyncio side with a pooled connection; return its result."""
        loop = self._loop
        if loop is None:
            raise DatabaseUnavailable("database pool is not started")
        token = trio.lowlevel.current_trio_token()
        if self._token is None:
            self._token = token
        elif self._token is not token:
            raise RuntimeError("a PgPool serves one trio run; start another pool for another trio run")
        call = _Call(fn, args, trio.lowlevel.current_task())
        self.calls += 1
        with self._lock:
            self._inbox.append(call)
            wake = not self._inbox_woken
            self._inbox_woken = True
        if wake:
            self.wakeups_to_asyncio += 1
            loop.call_soon_threadsafe(self._drain_inbox)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the database work is not interrupted; see docstring

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _deliver(self) -> None:  # trio thread, from run_sync_soon
        with self._lock:
            done = list(self._outbox)
            self._outbox.clear()
            self._outbox_woken = False
        for call in done:
            assert call.result is not None
            trio.lowlevel.reschedule(call.task, call.result)

    # -- blocking side (CLI, tests) -------------------------------------------------------------
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(conn, *args)`` from ordinary blocking code and wait for the result."""
        if self._loop is None:
            raise DatabaseUnavailable("database pool is not started")
        return asyncio.run_coroutine_threadsafe(self._with_conn(fn, args), self._loop).result()

    # -- asyncio side ---------------------------------------------------------------------------
    def _thread_main(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        # An exception nobody awaited (a connection lost in an outage) is one structured event, not
        # asyncio's multi-line default.
        loop.set_exception_handler(asyncio_exception_handler)
        asyncio.set_event_loop(loop)
        try:
            self._pool = loop.run_until_complete(self._open())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        self._loop = loop
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._pool.close())
            loop.close()

    async def _open(self) -> Any:
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                init=self._init_conn,
                server_settings=self.server_settings,
                **_NO_RESET,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from None
        return pool

    async def _init_conn(self, conn: Any) -> None:
        if not self.role:
            return
        may = await conn.fetchval(
            "SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1", self.role
        )
        if may:
            await conn.execute(f'SET ROLE "{self.role}"')
            self.role_active = True

    def _drain_inbox(self) -> None:
        loop = self._loop
        assert loop is not None
        with self._lock:
            calls = list(self._inbox)
            self._inbox.clear()
            self._inbox_woken = False
        for call in calls:
            loop.create_task(self._execute(call))

    async def _with_conn(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        async with self._pool.acquire() as conn:
            try:
                return await fn(conn, *args)
            except BaseException as exc:
                mapped = _as_unavailable(exc, conn)
                if mapped is exc:
                    raise
                raise mapped from exc

    async def _execute(self, call: _Call) -> None:
        # The result goes back before the connection is released: a release may cost a round trip
        # (an older asyncpg's reset query), and the caller's answer must not wait for it.
        try:
            async with self._pool.acquire() as conn:
                try:
                    call.result = outcome.Value(await call.fn(conn, *call.args))
                except BaseException as exc:  # delivered to the trio caller, which re-raises it
                    call.result = outcome.Error(_as_unavailable(exc, conn))
                self._post(call)
        except BaseException as exc:
            if call.result is None:  # no connection to be had: that is the caller's answer
                if isinstance(exc, Exception):  # whatever the server said (starting up, not accepting)
                    unavailable = DatabaseUnavailable(f"no database connection: {exc}")
                    unavailable.__cause__ = exc
                    exc = unavailable
                call.result = outcome.Error(exc)
                self._post(call)
            # else the release failed after delivery; asyncpg has already dropped that connection

    def _post(self, call: _Call) -> None:
        with self._lock:
            self._outbox.append(call)
            wake = not self._outbox_woken
            self._outbox_woken = True
        if wake:
            assert self._token is not None
            self.wakeups_to_trio += 1
            self._token.run_sync_soon(self._deliver)


_POOLS: weakref.WeakSet[PgPool] = weakref.WeakSet()


class _BridgeCollector:
    """payswitch_pgpool_calls_total and payswitch_pgpool_wakeups_total{direction}, summed over the
    process's pools: read at scrape time from plain counters (a Prometheus counter per call would cost
    a lock on the hot path)."""

    def collect(self) -> Any:
        pools = list(_POOLS)
        calls = CounterMetricFamily("payswitch_pgpool_calls", "Database calls from trio through ops.pgpool.")
        calls.add_metric([], sum(p.calls for p in pools))
        yield calls
        wakeups = CounterMetricFamily(
            "payswitch_pgpool_wakeups",
            "Cross-thread wake-ups between the trio loop and the pgpool asyncio loop.",
            labels=["direction"],
        )
        wakeups.add_metric(["to_asyncio"], sum(p.wakeups_to_asyncio for p in pools))
        wakeups.add_metric(["to_trio"], sum(p.wakeups_to_trio for p in pools))
        yield wakeups


REGISTRY.register(_BridgeCollector())
