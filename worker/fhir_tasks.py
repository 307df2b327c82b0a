"""FHIR push: an AI read's DiagnosticReport to an external FHIR server (issue 5 item 6).

* :func:`queue_ai_report` is called by ``worker.tasks.analyse_study`` in the unit of work that
  records a read: when ``fhir_push_url`` is set it queues a ``fhir_outbound`` row with its task's
  outbox row (``clinic.fhirpush.service``), so the read and its push commit together.
* ``clinic.fhir_push(outbound_id, token)`` claims the row, builds a transaction Bundle from the
  domain rows (the same projections ``/fhir`` serves) and POSTs it to the server with httpx:
  the Patient (conditional create on its identifier), the ImagingStudy (conditional create on its
  Study Instance UID) and the DiagnosticReport (conditional update on its AI-read identifier),
  linked by ``urn:uuid`` fullUrls (R4 http.html §3.1.0.11.2), so a retried push updates what the
  first one wrote and nothing needs this server's ids. Outcome: 2xx sent; 4xx except 408/429
  failed for good (the server refuses the content); 408, 429, 5xx and network errors pending
  again after ``delivery_backoff_seconds`` doubling up to ``delivery_backoff_cap_seconds``,
  handed out by the relay's sweep. Every attempt is a ``fhir_outbound_attempts`` row.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from clinic.ai.models import AIRead
from clinic.db import unit_of_work
from clinic.fhirpush.models import FhirOutbound, PushOutcome
from clinic.fhirpush.service import PUSH_TASK, claim, queue_push, record_attempt
from clinic.imaging.models import Series, Study
from clinic.outbox.service import backoff
from clinic.patients.models import Patient
from clinic.settings import Settings
from integrations.fhir.domain.diagnostic_report import report_body
from integrations.fhir.domain.imaging_study import study_body
from integrations.fhir.domain.patient import PatientProvider

log = logging.getLogger(__name__)

#: Per request: connect, send the Bundle, wait for the transaction-response. A LAN FHIR server
#: answers a 3-entry transaction in well under a second; 15 s bounds a hung one and stays under
#: clinic.fhirpush.service.SEND_LEASE (90 s).
PUSH_TIMEOUT_S = 15.0
FHIR_JSON = "application/fhir+json"
#: Statuses worth another attempt: request timeout, too many requests (RFC 9110 / RFC 6585).
RETRYABLE_4XX = frozenset({408, 429})


class NotPushable(Exception):
    """The read or its study is gone: nothing to push, ever."""


def queue_ai_report(session: Session, settings: Settings, read_id: int) -> FhirOutbound | None:
    """Queue the push of read *read_id*'s DiagnosticReport when ``fhir_push_url`` is set."""
    if not settings.fhir_push_url:
        return None
    return queue_push(session, "DiagnosticReport", str(read_id), settings.fhir_push_url)


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    """*node* with every ``reference`` found in *mapping* replaced (nested, contained too)."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, mapping) for k, v in node.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in mapping:
            out["reference"] = mapping[out["reference"]]
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node


def _condition(resource_type: str, identifier: dict[str, Any]) -> str:
    system, value = identifier.get("system", ""), identifier["value"]
    token = f"{system}|{value}" if system else value
    return f"{resource_type}?{urlencode({'identifier': token})}"


def report_bundle(session: Session, read_id: int) -> dict[str, Any]:
    """The transaction Bundle that writes read *read_id*'s report, study and patient."""
    read = session.scalars(
        select(AIRead)
        .where(AIRead.id == read_id)
        .options(selectinload(AIRead.findings), selectinload(AIRead.measurements))
    ).one_or_none()
    study = session.scalars(
        select(Study)
        .where(Study.id == (read.study_id if read else -1))
        .options(selectinload(Study.series).selectinload(Series.instances))
    ).one_or_none()
    patient = session.get(Patient, study.patient_id) if study else None
    if read is None or study is None or patient is None:
        raise NotPushable(f"AI read {read_id} or its study is gone")
    urns = {kind: f"urn:uuid:{uuid.uuid4()}" for kind in ("Patient", "ImagingStudy", "DiagnosticReport")}
    mapping = {f"Patient/{patient.id}": urns["Patient"], f"ImagingStudy/{study.id}": urns["ImagingStudy"]}
    ((_, patient_json),) = PatientProvider().bodies(session, [patient])
    study_json = study_body(study, [])  # basedOn: our orders mean nothing to that server
    report_json = report_body(read, study)
    bodies = {"Patient": patient_json, "ImagingStudy": study_json, "DiagnosticReport": report_json}
    entries = []
    for kind, body in bodies.items():
        resource = _rewrite({"resourceType": kind, **body}, mapping)
        condition = _condition(kind, body["identifier"][0])
        request = (
            {"method": "PUT", "url": condition}
            if kind == "DiagnosticReport"
            else {"method": "POST", "url": kind, "ifNoneExist": condition.partition("?")[2]}
        )
        entries.append({"fullUrl": urns[kind], "resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _diagnostics(response: httpx.Response) -> str:
    """What the server said, briefly: its OperationOutcome's diagnostics, else the status line."""
    try:
        issues = json.loads(response.content).get("issue") or []
        text = "; ".join(str(i.get("diagnostics") or i.get("code", "")) for i in issues)
    except (ValueError, AttributeError):
        text = ""
    return f"HTTP {response.status_code}" + (f": {text[:500]}" if text else "")


def classify(status: int) -> PushOutcome:
    if 200 <= status < 300:
        return PushOutcome.SUCCESS
    if status in RETRYABLE_4XX or status >= 500:
        return PushOutcome.TRANSIENT
    return PushOutcome.PERMANENT


def push(settings: Settings, url: str, bundle: dict[str, Any]) -> tuple[PushOutcome, int | None, str]:
    """POST *bundle* to *url*; (outcome, HTTP status or None, error text)."""
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if settings.fhir_push_token:
        headers["Authorization"] = f"Bearer {settings.fhir_push_token}"
    try:
        response = httpx.post(
            url.rstrip("/"), content=json.dumps(bundle), headers=headers, timeout=PUSH_TIMEOUT_S
        )
    except httpx.HTTPError as exc:  # refused, reset, timed out: the server may come back
        return PushOutcome.TRANSIENT, None, f"{type(exc).__name__}: {exc}"[:1000]
    outcome = classify(response.status_code)
    return outcome, response.status_code, "" if outcome is PushOutcome.SUCCESS else _diagnostics(response)


def push_outbound(settings: Settings, factory: Any, outbound_id: int, token: int) -> str:
    """One attempt of push *outbound_id*; the outcome (or ``skipped``)."""
    with unit_of_work(factory) as session:
        claimed = claim(session, outbound_id, token)
        bundle: dict[str, Any] | None = None
        error = ""
        if claimed is not None:
            try:
                bundle = report_bundle(session, int(claimed.resource_id))
            except NotPushable as exc:
                error = str(exc)
    if claimed is None:
        log.info("FHIR push %s: sent, failed or taken by another attempt; nothing to do", outbound_id)
        return "skipped"
    if bundle is None:
        outcome, status = PushOutcome.PERMANENT, None
    else:
        outcome, status, error = push(settings, claimed.url, bundle)
    retry_in = backoff(
        claimed.attempt, settings.delivery_backoff_seconds, settings.delivery_backoff_cap_seconds
    )
    with unit_of_work(factory) as session:
        record_attempt(session, outbound_id, outcome, http_status=status, error=error, retry_in=retry_in)
    if outcome is PushOutcome.TRANSIENT:
        log.warning(
            "FHIR push %s attempt %d failed (%s); next in %.0f s",
            outbound_id,
            claimed.attempt,
            error,
            retry_in.total_seconds(),
        )
    elif outcome is PushOutcome.PERMANENT:
        log.warning("FHIR push %s refused: %s", outbound_id, error)
    else:
        log.info("FHIR push %s sent (HTTP %s)", outbound_id, status)
    return outcome.value


def register(app: Celery, settings: Settings) -> None:
    """Define the push task on *app* (called by :func:`worker.app.create_celery`)."""
    from worker.tasks import is_transient, process_context  # worker.tasks imports this module

    @app.task(name=PUSH_TASK, acks_late=True)
    def fhir_push_task(outbound_id: int, token: int = 0) -> str:
        try:
            context = process_context(settings)
            return push_outbound(context.settings, context.session_factory, int(outbound_id), int(token))
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database is away: the claimed row comes back through the sweep after its lease.
            log.warning(
                "FHIR push %s: transient fault (%s); the sweep retries", outbound_id, type(exc).__name__
            )
            return "deferred"
