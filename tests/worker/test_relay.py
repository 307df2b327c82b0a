"""The outbox relay, in this process, on SQLite and PostgreSQL, publishing to real brokers."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.models import AnalysisJob, JobStatus
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import Study
from clinic.imaging.service import InstanceMeta, record_instance
from clinic.outbox.models import OutboxMessage
from clinic.outbox.service import enqueue
from clinic.patients.service import PatientDemographics
from clinic.settings import Environment, Settings
from tests.conftest import free_port
from tests.worker.conftest import wait_for
from worker.app import create_celery
from worker.relay import Relay, run_relay


def meta(study: str = "1.2.3", series: str = "1.2.3.1", sop: str = "1.2.3.1.1") -> InstanceMeta:
    return InstanceMeta(
        patient=PatientDemographics(identifier="P1"),
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"dicom/{study}/{series}/{sop}.dcm",
        file_size=10,
        modality="CR",
        body_part="CHEST",
        view_position="PA",
    )


@pytest.fixture
def embedded(data_dir: Path) -> Settings:
    """Settings whose broker is the embedded one under *data_dir* (the database is ``db_url``'s)."""
    settings = Settings(data_dir=data_dir, environment=Environment.TEST, series_quiet_seconds=0.2)
    settings.ensure_dirs()
    return settings


def _queued(settings: Settings) -> list[str]:
    return sorted(n for n in os.listdir(settings.broker_dir / "queue") if n.endswith(".msg"))


def test_completed_study_gets_job_outbox_row_and_message(
    embedded: Settings, session_factory: sessionmaker[Session]
) -> None:
    past = utcnow() - dt.timedelta(seconds=5)
    with unit_of_work(session_factory) as session:
        record_instance(session, meta(), now=past)
        record_instance(session, meta(study="9.9", series="9.9.1", sop="9.9.1.1"), now=past)
        session.scalars(select(Study).where(Study.study_uid == "9.9")).one().order_priority = 2  # STAT
    relay = Relay(embedded, create_celery(embedded), session_factory)
    assert relay.sweep() == (2, 0)
    assert relay.publish_due() == (2, 0)
    assert relay.sweep() == (0, 0) and relay.publish_due() == (0, 0)  # nothing twice
    relay.close()
    with unit_of_work(session_factory) as session:
        jobs = session.scalars(select(AnalysisJob)).all()
        assert len(jobs) == 2 and all(j.status == JobStatus.PENDING for j in jobs)
        rows = session.scalars(select(OutboxMessage)).all()
        assert len(rows) == 2 and all(r.published_at is not None for r in rows)
    # Two message files; the STAT study's sorts first (priority 2 -> file prefix 9 - 2 = 7).
    files = _queued(embedded)
    assert [name[0] for name in files] == ["7", "9"]
    assert all(name.endswith(".inference.cpu.msg") for name in files)


def test_expired_lease_is_handed_out_again(
    embedded: Settings, session_factory: sessionmaker[Session]
) -> None:
    with unit_of_work(session_factory) as session:
        record_instance(session, meta(), now=utcnow() - dt.timedelta(seconds=5))
    relay = Relay(embedded, create_celery(embedded), session_factory)
    relay.sweep()
    with unit_of_work(session_factory) as session:  # a worker took it and died
        job = session.scalars(select(AnalysisJob)).one()
        job.status = JobStatus.RUNNING
        job.lease_expires_at = utcnow() - dt.timedelta(seconds=1)
    assert relay.sweep() == (0, 1)
    assert relay.publish_due() == (2, 0)
    relay.close()


def test_broker_down_marks_rows_and_backs_off(data_dir: Path, session_factory: sessionmaker[Session]) -> None:
    settings = Settings(
        data_dir=data_dir, environment=Environment.TEST, broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with unit_of_work(session_factory) as session:
        enqueue(session, "clinic.analyse_study", "inference.cpu", {"job_id": 1})
        enqueue(session, "clinic.analyse_study", "inference.cpu", {"job_id": 2})
    relay = Relay(settings, create_celery(settings), session_factory)
    assert relay.publish_due() == (0, 2)
    assert relay.publish_due() == (0, 0)  # backing off: not due yet
    relay.close()
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(OutboxMessage)).all()
        for row in rows:
            assert row.published_at is None and row.attempts == 1
            assert "broker unreachable" in row.last_error
            assert row.next_attempt_at > utcnow()


def test_several_relays_publish_each_row_once(
    embedded: Settings, session_factory: sessionmaker[Session]
) -> None:
    total = 300
    with unit_of_work(session_factory) as session:
        for i in range(total):
            enqueue(session, "clinic.analyse_study", "inference.cpu", {"job_id": i})
    stop = threading.Event()
    relays = [
        threading.Thread(target=run_relay, args=(embedded, create_celery(embedded), stop, session_factory))
        for _ in range(3)
    ]
    for thread in relays:
        thread.start()
    try:

        def all_published() -> bool:
            with unit_of_work(session_factory) as session:
                return not session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                )

        wait_for(all_published, 60, "every outbox row to be published")
    finally:
        stop.set()
        for thread in relays:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in relays)
    assert len(_queued(embedded)) == total
    with unit_of_work(session_factory) as session:
        assert set(session.scalars(select(OutboxMessage.attempts)).all()) == {1}


@pytest.mark.redis
def test_redis_priorities_are_reversed_for_kombu(
    data_dir: Path, session_factory: sessionmaker[Session], redis_db: str
) -> None:
    """kombu's Redis transport pops priority step 0 first: a STAT row must land in a sooner list."""
    import redis

    url = redis_db
    client = redis.Redis.from_url(url)
    settings = Settings(data_dir=data_dir, environment=Environment.TEST, broker_url=url)
    with unit_of_work(session_factory) as session:
        enqueue(session, "clinic.analyse_study", "inference.cpu", {"job_id": 1}, priority=0)
        enqueue(session, "clinic.analyse_study", "inference.cpu", {"job_id": 2}, priority=2)
    relay = Relay(settings, create_celery(settings), session_factory)
    try:
        assert relay.publish_due() == (2, 0)
        # priority 2 (STAT) -> kombu priority 7 -> list "inference.cpu:7"; routine 0 -> 9.
        assert client.llen("inference.cpu:7") == 1 and client.llen("inference.cpu:9") == 1
    finally:
        relay.close()
        client.flushdb()
        client.close()
