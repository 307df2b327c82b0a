"""The listener's store: group commit of arrivals, store first, answer after (DESIGN.md §4 rule 1).

Messages that arrive while a commit runs are committed together in the next transaction: one fsync
(SQLite WAL synchronous=FULL, a PostgreSQL commit) for many messages, then every acknowledgement of
the batch is sent. The common batch (all keys new) is written by
:class:`clinic.messages.service.ArrivalWriter` below SQLAlchemy; repeats and replaced rejections go
through :func:`clinic.messages.service.record_arrivals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

from clinic.messages.service import Arrival, ArrivalWriter, Recorded, record_arrivals
from integrations.hl7v2.errors import StoreUnavailableError

log = logging.getLogger(__name__)

#: Called in the event loop once an arrival's transaction is over: its record, or the error
#: (:class:`StoreUnavailableError`) when it was not stored.
Done = Callable[[Recorded | None, StoreUnavailableError | None], None]

#: At most this many messages per transaction (the SQL statement stays well under SQLite's 32,766
#: bound parameters; one batch commits in a few ms).
MAX_BATCH = 500
#: A connection that sent within this time is expected to send again soon, and the commit waits
#: for it at most MAX_GATHER_S (measured here: without the wait, 8 clients and a 2-4 ms fsync gave
#: 1.6 messages per commit and fewer messages/s than one client; with it, 4.4 and 4x the rate).
ACTIVE_SENDER_S = 0.5
MAX_GATHER_S = 0.002
#: ... and at least this long: a sender needs about that to read its ACK and send the next
#: message. With the wait bounded by the last commit alone (~0.3 ms), the listener answering
#: straight from the commit (no task switch) committed 2.9 messages per transaction with 8
#: senders and 6,600 messages/s; with this floor, 8.0 and 8,700/s (bench/mllp_ack.py).
MIN_GATHER_S = 0.0005
#: SQLite: how often the store tries for the write lock, and for how long.
LOCK_POLL_S = 0.0005
LOCK_WAIT_S = 30.0


class GroupCommitter:
    """Commits arrivals in batches; each submitter awaits its own result.

    Arrivals queue while a commit runs; the next transaction takes them all (up to
    :data:`MAX_BATCH`). Before committing, it waits briefly for the other active connections'
    messages (:meth:`_gather`). By default the commit runs in the event loop's own thread
    (``threaded=False``): the loop is blocked during the commit, and the bytes that arrive meanwhile
    wait in the kernel and form the next batch. Handing each batch to a database thread instead
    (``threaded=True``) keeps the loop free during the fsync but costs a thread hop (~100 µs) per
    batch, more than the insert itself (~45 µs), and the listener is CPU-bound (bench/mllp_ack.py
    compares both). A database that stalls stalls the acknowledgements either way.
    """

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH, threaded: bool = False) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: list[tuple[Arrival, Done]] = []
        self._wakeup = asyncio.Event()
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-store") if threaded else None
        )
        self._writer = ArrivalWriter(engine)
        self._connection: Connection | None = None  # the general path (repeats), SQLAlchemy Core
        self._task: asyncio.Task[None] | None = None
        self._loop_time: Callable[[], float] = time.monotonic
        self._senders: dict[int, float] = {}  # id(connection) -> loop time of its last message
        self._expected = 1 << 30  # arrivals that end the current gathering
        self._gathered = asyncio.Event()
        self._last_commit_s = 0.0
        self.batches = 0
        self.stored = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        self._task = loop.create_task(self._run(), name="hl7-group-commit")

    def submit(self, arrival: Arrival, source: object, done: Done) -> None:
        """Queue *arrival*; *source* names its connection (who is sending, for the gathering);
        *done* is called with the outcome, in the loop, right after the transaction (no future,
        no task switch: the connection writes its acknowledgement from there)."""
        self._queue.append((arrival, done))
        self._senders[id(source)] = self._loop_time()
        self._wakeup.set()
        if len(self._queue) >= self._expected:
            self._gathered.set()

    def forget(self, source: object) -> None:
        """*source* closed: do not wait for it."""
        self._senders.pop(id(source), None)

    async def stop(self) -> None:
        """Commit what is queued, then release the connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue:
            await self._commit_queued()
        if self._executor is not None:
            self._executor.submit(self._close_connections).result()
            self._executor.shutdown(wait=True)
        else:
            self._close_connections()
        if self.batches:
            log.info(
                "HL7 store: %d messages in %d transactions (%.1f per group commit)",
                self.stored, self.batches, self.stored / self.batches,
            )  # fmt: skip

    def _active_senders(self, now: float) -> int:
        """Connections that sent within :data:`ACTIVE_SENDER_S`: how many to wait for."""
        if len(self._senders) > 64:
            self._senders = {k: t for k, t in self._senders.items() if now - t < ACTIVE_SENDER_S}
        return sum(1 for t in self._senders.values() if now - t < ACTIVE_SENDER_S)

    async def _gather(self) -> None:
        """Wait briefly for the other active connections' messages before committing, so that one
        fsync serves them all (PostgreSQL's commit_delay idea). A lone sender never waits; the
        wait is about the last commit's duration (another commit would cost as much), at least
        :data:`MIN_GATHER_S` and at most :data:`MAX_GATHER_S`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._expected = self._active_senders(now)
        if len(self._queue) >= self._expected:
            return
        deadline = now + min(MAX_GATHER_S, max(MIN_GATHER_S, self._last_commit_s))
        self._gathered.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._gathered.wait()
        self._expected = 1 << 30

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._gather()
                await self._commit_queued()

    async def _commit_queued(self) -> None:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        arrivals = [arrival for arrival, _ in batch]
        started = time.monotonic()
        try:
            if self._executor is None:
                results = self._store(arrivals)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._executor, self._store, arrivals)
        except asyncio.CancelledError:
            self._queue[:0] = batch  # stop() commits them
            raise
        except Exception as exc:  # the database is unavailable: every message of the batch is refused
            log.error("HL7 store failed for %d message(s): %s", len(batch), type(exc).__name__)
            for _, done in batch:
                _call(done, None, StoreUnavailableError("message not stored; send it again"))
            return
        self._last_commit_s = time.monotonic() - started
        self.batches += 1
        self.stored += len(batch)
        for (_, done), result in zip(batch, results, strict=True):
            _call(done, result, None)

    def _store(self, arrivals: list[Arrival]) -> list[Recorded]:
        """One committed transaction: the fast path when every key is new, else the general one
        (repeats, replaced rejections) on a Core connection. SQLite's write lock is polled for."""
        conflicts = 0
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                recorded = self._writer.try_insert(arrivals)
                if recorded is not None:
                    return recorded
                if self._connection is None or self._connection.invalidated:
                    self._close_connection()
                    self._connection = self.engine.connect()
                with self._connection.begin():
                    return record_arrivals(self._connection, arrivals)
            except sa_exc.IntegrityError:
                # Another listener stored one of these keys between our look-up and our insert:
                # the next attempt sees it and answers it as a repeat.
                conflicts += 1
                if conflicts == 3:
                    raise
            except Exception as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    self._close_connection()  # e.g. the server went away: a new one next time
                    raise
                time.sleep(LOCK_POLL_S)

    def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _close_connections(self) -> None:
        self._close_connection()
        self._writer.close()


def _call(done: Done, result: Recorded | None, error: StoreUnavailableError | None) -> None:
    """*done*, whose failure (a connection's own bug) must not cost the rest of the batch."""
    try:
        done(result, error)
    except Exception:  # noqa: BLE001 - logged with its frames; the other messages go on
        log.exception("HL7 store: acknowledging a stored message failed")


def _is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked", raised through SQLAlchemy or by the driver itself."""
    return "database is locked" in str(exc)


def poll_for_the_write_lock(engine: Engine) -> None:
    """SQLite: wait for the single write lock by polling every :data:`LOCK_POLL_S` instead of with
    SQLite's busy handler, whose sleeps grow to 100 ms: a processor or relay that commits and begins
    again at once would otherwise win the lock every time and starve the listener (measured: ACKs
    waited seconds while the processor ran back-to-back passes)."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=1")
        cursor.close()
