"""The pure parts: date ranges, token escaping, criteria hashes, index entries, the scope table,
the CapabilityStatement, and a provider that is not the generic store (what part 2's domain-backed
providers will be) behind the same interactions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from sqlalchemy.orm import Session

from clinic.auth.models import Role
from clinic.db import utcnow
from clinic.fhirstore.query import TokenTerm
from integrations.fhir.capability import capability_statement
from integrations.fhir.interactions import Interactions
from integrations.fhir.outcome import FhirError
from integrations.fhir.providers import (
    IndexEntry,
    NewResource,
    ProviderRegistry,
    ResourceProvider,
    SearchPage,
    StoredResource,
)
from integrations.fhir.scopes import ROLE_SCOPES, Access, allows
from integrations.fhir.search import SearchRequest, date_range, index_entries, parse_search, split_unescaped
from integrations.fhir.validation import check_resource
from tests.integrations.fhir.conftest import vital

UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        (
            "2024",
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            dt.datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-02",
            dt.datetime(2024, 2, 1, tzinfo=UTC),
            dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-12-31",
            dt.datetime(2024, 12, 31, tzinfo=UTC),
            dt.datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-01T10:00:00+09:00",
            dt.datetime(2024, 3, 1, 1, tzinfo=UTC),
            dt.datetime(2024, 3, 1, 1, 0, 0, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-01T10:00:00.250Z",
            dt.datetime(2024, 3, 1, 10, 0, 0, 250000, tzinfo=UTC),
            dt.datetime(2024, 3, 1, 10, 0, 0, 250000, tzinfo=UTC),
        ),
        (
            "2024-03-01T10:00Z",
            dt.datetime(2024, 3, 1, 10, tzinfo=UTC),
            dt.datetime(2024, 3, 1, 10, 0, 59, 999999, tzinfo=UTC),
        ),
    ],
)
def test_date_ranges_follow_the_precision_given(text: str, start: dt.datetime, end: dt.datetime) -> None:
    assert date_range(text) == (start, end)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-02-30", "24-01-01"])
def test_not_dates(text: str) -> None:
    assert date_range(text) is None


def test_escaped_separators_and_tokens() -> None:
    assert split_unescaped(r"a\,b,c", ",") == ["a,b", "c"]
    clause = parse_search("Observation", [("code", r"http://x|a\|b,c")]).clauses[0]
    assert clause.terms == (TokenTerm("http://x", "a|b"), TokenTerm(None, "c"))


def test_criteria_hash_ignores_order_and_result_parameters() -> None:
    one = parse_search("Patient", [("identifier", "s|1"), ("gender", "male"), ("_count", "5")])
    two = parse_search("Patient", [("gender", "male"), ("identifier", "s|1")])
    other = parse_search("Patient", [("identifier", "s|2"), ("gender", "male")])
    assert one.criteria_hash() == two.criteria_hash() != other.criteria_hash()


def test_index_entries_of_an_observation() -> None:
    body = vital("p1", when="2024-03-01")
    body["identifier"] = [{"system": "urn:x", "value": "42"}]
    entries = index_entries("Observation", body)
    by_param = {(e.param, e.system, e.value) for e in entries if e.start is None}
    assert ("subject", "Patient", "p1") in by_param
    assert ("code", "http://loinc.org", "8867-4") in by_param
    assert ("identifier", "urn:x", "42") in by_param
    assert ("status", "", "final") in by_param
    (date,) = [e for e in entries if e.param == "date"]
    assert date.start == dt.datetime(2024, 3, 1, tzinfo=UTC)
    assert not any(e.param == "patient" for e in entries)  # an alias of subject, not stored twice


def test_appointment_patient_is_a_participant() -> None:
    body = {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }
    check_resource(body, "Appointment")
    assert IndexEntry("actor", "Patient", "p1") in index_entries("Appointment", body)
    clause = parse_search("Appointment", [("patient", "p1")]).clauses[0]
    assert clause.param == "actor" and clause.terms == (TokenTerm("Patient", "p1"),)


def test_scope_table() -> None:
    assert allows(Role.ICU_NURSE, "Observation", Access.READ)
    assert not allows(Role.ICU_NURSE, "DiagnosticReport", Access.WRITE)
    assert allows(Role.RADIOLOGIST, "DiagnosticReport", Access.WRITE)
    assert not allows(Role.RADIOLOGIST, "Observation", Access.WRITE)
    assert allows(Role.CLINIC, "Appointment", Access.WRITE) and allows(Role.CLINIC, "Slot", Access.WRITE)
    assert allows(Role.ADMIN, "ImagingStudy", Access.WRITE)
    assert set(ROLE_SCOPES) == set(Role)


def test_capability_statement_is_valid_r4b() -> None:
    statement = capability_statement(ProviderRegistry(), "http://example.org/fhir")
    parsed = CapabilityStatement.model_validate(statement)
    assert parsed.fhirVersion == "4.0.1"
    assert len(parsed.rest[0].resource) == 11


class MemoryProvider(ResourceProvider):
    """A provider with its own storage, as a domain-backed one will have: no fhir_resources rows."""

    def __init__(self, resource_type: str) -> None:
        self.resource_type = resource_type
        self.rows: dict[str, list[StoredResource]] = {}

    def _stored(self, logical_id: str, version: int, body: dict[str, Any]) -> StoredResource:
        import json

        content = json.dumps({**body, "id": logical_id, "meta": {"versionId": str(version)}})
        return StoredResource(self.resource_type, logical_id, version, utcnow(), content)

    def read(self, session: Session, logical_id: str) -> StoredResource | None:
        versions = self.rows.get(logical_id)
        return versions[-1] if versions else None

    def vread(self, session: Session, logical_id: str, version_id: int) -> StoredResource | None:
        versions = self.rows.get(logical_id, [])
        return versions[version_id - 1] if 0 < version_id <= len(versions) else None

    def read_many(self, session: Session, logical_ids: Iterable[str]) -> list[StoredResource]:
        return [v[-1] for i, v in self.rows.items() if i in set(logical_ids)]

    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        out = []
        for item in items:
            self.rows[item.logical_id] = [self._stored(item.logical_id, 1, item.body)]
            out.append(self.rows[item.logical_id][0])
        return out

    def update(
        self,
        session: Session,
        logical_id: str,
        body: dict[str, Any],
        index: Sequence[IndexEntry],
        *,
        expected_version: int | None = None,
    ) -> StoredResource | None:
        if logical_id not in self.rows:
            return None
        stored = self._stored(logical_id, len(self.rows[logical_id]) + 1, body)
        self.rows[logical_id].append(stored)
        return stored

    def search(self, session: Session, request: SearchRequest) -> SearchPage:
        matches = [v[-1] for v in self.rows.values()]
        return SearchPage(matches[: request.count], False, len(matches))

    def history(
        self, session: Session, logical_id: str | None, *, since: Any = None, offset: int = 0, count: int = 20
    ) -> tuple[list[StoredResource], int]:
        versions = list(reversed(self.rows.get(logical_id or "", [])))
        return versions[offset : offset + count], len(versions)


def test_a_replacement_provider_serves_its_type() -> None:
    memory = MemoryProvider("Schedule")
    registry = ProviderRegistry()
    registry.replace(memory)
    ix = Interactions(registry)
    session: Any = None  # the memory provider never touches the database
    body = {"resourceType": "Schedule", "active": True, "actor": [{"display": "Room 2"}]}
    created = ix.create(session, "Schedule", body, "http://example.org/fhir")
    assert created.created and memory.rows[created.resource.logical_id]
    updated = ix.update(
        session,
        "Schedule",
        created.resource.logical_id,
        {**body, "id": created.resource.logical_id, "active": False},
        "http://example.org/fhir",
    )
    assert updated.resource.version_id == 2
    assert ix.read(session, "Schedule", created.resource.logical_id).body()["active"] is False
    with pytest.raises(FhirError) as refused:
        ix.create(session, "Schedule", {**body, "active": "yes"}, "http://example.org/fhir")
    assert refused.value.status == 400
    with pytest.raises(ValueError):
        registry.replace(MemoryProvider("Practitioner"))
