"""A broker outage delays work and never loses it (DESIGN.md §4 rule 2).

A private redis-server (no persistence) is the broker. It is stopped before a series completes: the
relay writes the job and its outbox row, cannot publish it and records the error with a backoff.
When redis-server runs again on the same port - empty, it kept nothing - the row is published and
the study is read, once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from clinic.ai.models import JobStatus
from clinic.ai.service import ANALYSE_STUDY_TASK
from clinic.db import unit_of_work, utcnow
from clinic.outbox.models import OutboxMessage
from tests.worker.conftest import PrivateRedis, Stack, make_stack, phantom_radiograph, wait_for
from tests.worker.test_pipeline import ANALYSIS_TIMEOUT_S, assert_one_good_read, wait_done

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _outbox(stack: Stack) -> list[OutboxMessage]:
    """The analysis messages (a read also enqueues the build of its result objects)."""
    query = select(OutboxMessage).where(OutboxMessage.task == ANALYSE_STUDY_TASK).order_by(OutboxMessage.id)
    with unit_of_work(stack.session_factory) as session:
        return list(session.scalars(query).all())


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_series_completing_while_the_broker_is_down_is_read_when_it_is_back(
    database: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    demo_models_dir: Path,
    private_redis: PrivateRedis,
    stacks: list[Stack],
) -> None:
    mode = "embedded" if database == "sqlite" else "postgres-redis"
    stack = make_stack(request, tmp_path, mode, demo_models_dir, broker_url=private_redis.url)
    stacks.append(stack)
    worker = stack.start_worker()

    private_redis.stop()
    study_uid = stack.store(phantom_radiograph(seed=11))
    study_id = wait_for(lambda: stack.study_id(study_uid), 10, "the study row")

    def failed_publish() -> list[OutboxMessage]:
        rows = _outbox(stack)
        return [r for r in rows if r.published_at is None and r.attempts >= 2 and r.last_error]

    rows = wait_for(failed_publish, 60, "the relay to fail publishing and back off")
    (row,) = rows
    assert "unreachable" in row.last_error or "Error" in row.last_error, row.last_error
    assert row.next_attempt_at > row.created_at  # backed off
    job = stack.job(study_id)
    assert job is not None and job.status == JobStatus.PENDING
    assert worker.alive_or_fail()  # the worker (and its relay) survive the outage

    private_redis.start()  # same port, empty: only the outbox remembers the work
    wait_done(stack, study_uid, timeout=ANALYSIS_TIMEOUT_S)
    assert_one_good_read(stack, study_id)
    (row,) = _outbox(stack)
    assert row.published_at is not None and row.published_at <= utcnow() and row.last_error == ""
    assert worker.terminate() == 0, worker.log()[-3000:]
