"""The domain services on SQLite and on PostgreSQL: indexing, completion, jobs, reads, outbox."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai import service as ai
from clinic.ai.models import AIRead, AnalysisJob, JobStatus
from clinic.db import unit_of_work, utcnow
from clinic.imaging.models import Instance, ReceiveStatus, Series, Study
from clinic.imaging.service import InstanceMeta, complete_quiet_series, record_instance
from clinic.outbox import service as outbox
from clinic.outbox.models import OutboxMessage
from clinic.patients.models import Patient
from clinic.patients.service import PatientDemographics


def meta(study: str = "1.2.3", series: str = "1.2.3.1", sop: str = "1.2.3.1.1", **kw: object) -> InstanceMeta:
    fields: dict[str, object] = {
        "patient": PatientDemographics(identifier="P1", name="DOE^JANE"),
        "study_uid": study,
        "series_uid": series,
        "sop_instance_uid": sop,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "file_path": f"dicom/{study}/{series}/{sop}.dcm",
        "file_size": 10,
        "modality": "CR",
        "body_part": "CHEST",
        "view_position": "PA",
    }
    fields.update(kw)
    return InstanceMeta(**fields)  # type: ignore[arg-type]


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_record_instance_indexes_and_replaces(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        record_instance(session, meta())
        record_instance(session, meta(sop="1.2.3.1.2"))
    with unit_of_work(session_factory) as session:
        record_instance(session, meta(file_size=99))  # the same SOP instance sent again
    with unit_of_work(session_factory) as session:
        assert (count(session, Patient), count(session, Study), count(session, Series)) == (1, 1, 1)
        assert count(session, Instance) == 2
        sizes = sorted(session.scalars(select(Instance.file_size)))
        assert sizes == [10, 99]


def test_concurrent_first_instances_make_one_study(session_factory: sessionmaker[Session]) -> None:
    """Several associations deliver the first instances of one new study at the same moment."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def deliver(i: int) -> None:
        try:
            barrier.wait()
            with unit_of_work(session_factory) as session:
                record_instance(session, meta(sop=f"1.2.3.1.{i + 10}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with unit_of_work(session_factory) as session:
        assert (count(session, Patient), count(session, Study), count(session, Instance)) == (1, 1, 4)


def test_study_completes_only_when_every_series_is_quiet(session_factory: sessionmaker[Session]) -> None:
    t0 = utcnow()
    with unit_of_work(session_factory) as session:
        record_instance(session, meta(), now=t0)
        record_instance(session, meta(series="1.2.3.2", sop="1.2.3.2.1"), now=t0 + dt.timedelta(seconds=4))
    quiet = dt.timedelta(seconds=5)
    with unit_of_work(session_factory) as session:
        assert complete_quiet_series(session, quiet, now=t0 + dt.timedelta(seconds=6)) == []
    with unit_of_work(session_factory) as session:
        statuses = sorted(s.status for s in session.scalars(select(Series)))
        assert statuses == [ReceiveStatus.COMPLETE, ReceiveStatus.RECEIVING]
    with unit_of_work(session_factory) as session:
        done = complete_quiet_series(session, quiet, now=t0 + dt.timedelta(seconds=10))
        assert [s.study_uid for s in done] == ["1.2.3"]
    with unit_of_work(session_factory) as session:
        # a late instance re-opens the study: it must be quiet again before it counts as complete
        record_instance(session, meta(sop="1.2.3.1.9"), now=t0 + dt.timedelta(seconds=11))
        study = session.scalars(select(Study)).one()
        assert study.status == ReceiveStatus.RECEIVING and study.completed_at is None


def test_job_and_outbox_commit_together(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        record_instance(session, meta())
    with pytest.raises(RuntimeError):
        with unit_of_work(session_factory) as session:
            study = session.scalars(select(Study)).one()
            ai.request_analysis(session, study, "inference.cpu")
            raise RuntimeError("crash before commit")
    with unit_of_work(session_factory) as session:
        assert count(session, AnalysisJob) == 0 and count(session, OutboxMessage) == 0
        study = session.scalars(select(Study)).one()
        job = ai.request_analysis(session, study, "inference.cpu", priority=2)
    with unit_of_work(session_factory) as session:
        message = session.scalars(select(OutboxMessage)).one()
        assert message.kwargs == {"job_id": job.id} and message.queue == "inference.cpu"
        assert message.task == ai.ANALYSE_STUDY_TASK and message.priority == 2


def test_leases_and_idempotent_reads(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        record_instance(session, meta())
        study = session.scalars(select(Study)).one()
        job_id = ai.request_analysis(session, study, "inference.cpu").id
    lease = dt.timedelta(seconds=30)
    with unit_of_work(session_factory) as session:
        assert ai.claim_job(session, job_id, lease) is not None
    with unit_of_work(session_factory) as session:
        assert ai.claim_job(session, job_id, lease) is None  # held by the first worker
    with unit_of_work(session_factory) as session:
        later = utcnow() + dt.timedelta(seconds=60)
        assert ai.requeue_expired(session, "inference.cpu", now=later) == [job_id]
    read_in = ai.ReadIn(
        model_id="m",
        model_name="M",
        model_version="1",
        sop_instance_uid="1.2.3.1.1",
        is_synthetic=True,
        findings=(ai.FindingIn(code="c", label="C", probability=0.9, threshold=0.5, urgency=1),),
    )
    with unit_of_work(session_factory) as session:
        assert ai.claim_job(session, job_id, lease) is not None
        first = ai.record_read(session, study.id, job_id, read_in)
        ai.finish_job(session, job_id)
    with unit_of_work(session_factory) as session:  # a redelivered task
        assert ai.claim_job(session, job_id, lease) is None
        again = ai.record_read(session, study.id, job_id, read_in)
        assert again.id == first.id
    with unit_of_work(session_factory) as session:
        assert count(session, AIRead) == 1
        assert session.get(AnalysisJob, job_id).status == JobStatus.DONE  # type: ignore[union-attr]
        finding = session.scalars(select(AIRead)).one().findings[0]
        assert finding.positive and finding.urgency == 1


def test_outbox_backoff(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        outbox.enqueue(session, "t", "q", {"a": 1})
    with unit_of_work(session_factory) as session:
        (message,) = outbox.claim_unpublished(session)
        outbox.mark_failed_attempt(message, "broker down")
    with unit_of_work(session_factory) as session:
        assert outbox.claim_unpublished(session) == []  # backing off
        assert outbox.pending_count(session) == 1
        message = session.scalars(select(OutboxMessage)).one()
        assert message.attempts == 1 and message.last_error == "broker down"


def test_a_published_job_never_taken_is_handed_out_again(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        record_instance(session, meta())
        study = session.scalars(select(Study)).one()
        job_id = ai.request_analysis(session, study, "inference.cpu").id
    later = utcnow() + dt.timedelta(minutes=20)
    wait = dt.timedelta(minutes=15)
    with unit_of_work(session_factory) as session:
        # not yet published (say the broker is down): the relay still owns it, no duplicate row
        assert ai.requeue_stale_pending(session, "inference.cpu", wait, now=later) == []
        for message in outbox.claim_unpublished(session):
            outbox.mark_published(message)
    with unit_of_work(session_factory) as session:
        assert ai.requeue_stale_pending(session, "inference.cpu", wait) == []  # published just now
        assert ai.requeue_stale_pending(session, "inference.cpu", wait, now=later) == [job_id]
    with unit_of_work(session_factory) as session:
        assert outbox.pending_count(session) == 1
        assert ai.claim_job(session, job_id, dt.timedelta(seconds=30)) is not None
    with unit_of_work(session_factory) as session:  # running jobs are the lease's business
        assert ai.requeue_stale_pending(session, "inference.cpu", wait, now=later) == []


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("KIM^JISOO", "KIM, JISOO"),
        ("DOE^JOHN^Q^DR^JR", "DOE, DR JOHN Q JR"),
        ("HONG^GILDONG=洪^吉洞", "HONG, GILDONG = 洪, 吉洞"),
        ("SINGLE", "SINGLE"),
        ("", ""),
    ],
)
def test_person_names_are_shown_without_carets(raw: str, shown: str) -> None:
    from clinic.patients.service import display_name

    assert display_name(raw) == shown
