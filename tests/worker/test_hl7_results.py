"""analyse_study's HL7 hook with the real demo model: the read and its ORU^R01 commit together, and
the queued message reaches an EMR (python-hl7's MLLP server) through the delivery task."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest
from sqlalchemy import select

from clinic.ai.models import AIRead
from clinic.ai.service import request_analysis
from clinic.db import unit_of_work
from clinic.imaging.models import Study
from clinic.messages.models import OutboundHL7
from clinic.messages.outbound import OutboundStatus
from clinic.outbox.models import OutboxMessage
from tests.conftest import free_port
from tests.integrations.hl7v2.peer_emr import PeerEMR
from tests.worker.conftest import make_stack, phantom_radiograph
from worker.hl7_tasks import deliver_outbound
from worker.tasks import WorkerContext, analyse_study


def test_an_ai_read_is_sent_as_oru_r01(
    request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path
) -> None:
    port = free_port()
    stack = make_stack(
        request,
        tmp_path,
        "embedded",
        demo_models_dir,
        series_quiet_seconds=3600,
        hl7_results_destination=f"127.0.0.1:{port}",
    )
    study_uid = stack.store(phantom_radiograph(seed=11))
    with unit_of_work(stack.session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        job_id = request_analysis(session, study, "inference.cpu").id
    context = WorkerContext(stack.settings)
    assert analyse_study(context, job_id) == "done"

    with unit_of_work(stack.session_factory) as session:
        (read,) = session.scalars(select(AIRead)).all()
        (row,) = session.scalars(select(OutboundHL7)).all()
        assert (row.subject_kind, row.subject_id, row.status) == ("ai_read", read.id, OutboundStatus.PENDING)
        tasks = session.scalars(select(OutboxMessage).where(OutboxMessage.task == "clinic.hl7_deliver")).all()
        assert [t.kwargs["outbound_id"] for t in tasks] == [row.id]
        outbound_id, control_id = row.id, row.control_id
        codes = {f.code for f in read.findings}

    peer = PeerEMR(port).start()
    try:
        assert deliver_outbound(context, outbound_id, token=0) == "success"
    finally:
        peer.stop()
    (received,) = peer.received
    message = hl7.parse(received)
    assert str(message.segment("MSH")[10]) == control_id
    assert {str(obx[3][0][0]) for obx in message.segments("OBX") if str(obx[2]) == "NM"} == codes
