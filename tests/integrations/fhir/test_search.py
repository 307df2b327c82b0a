"""Search through the real server on SQLite and PostgreSQL: tokens, references, date prefixes,
paging links, sorting, _include, _lastUpdated, strings and totals (FHIR R4 search.html)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integrations.fhir.conftest import LOINC, MRN, FhirServer, create, patient, unique, vital


@dataclass
class Chart:
    patient_id: str
    mrn: str
    ids: dict[str, str]  # label -> Observation id


@pytest.fixture(scope="module")
def chart(any_server: FhirServer) -> Chart:
    mrn = unique("mrn")
    pid = str(create(any_server, patient(mrn, name=[{"family": "Šimić", "given": ["Ana"]}]))["id"])
    observations = {
        "hr1": vital(pid, "8867-4", 80, "/min", "2024-03-01T10:00:00Z"),
        "hr2": vital(pid, "8867-4", 90, "/min", "2024-03-02T10:00:00Z"),
        "spo2": vital(pid, "59408-5", 97, "%", "2024-03-01T11:00:00Z"),
        "temp": vital(pid, "8310-5", 37.2, "Cel", "2024-02-15", status="amended"),
    }
    ids = {label: str(create(any_server, body)["id"]) for label, body in observations.items()}
    return Chart(pid, mrn, ids)


def _search(server: FhirServer, path: str, **params: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def _labels(chart: Chart, bundle: dict[str, Any]) -> list[str]:
    by_id = {v: k for k, v in chart.ids.items()}
    return [by_id[e["resource"]["id"]] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _observations(server: FhirServer, chart: Chart, **params: Any) -> list[str]:
    return _labels(chart, _search(server, "/Observation", patient=chart.patient_id, **params))


def test_token_and_reference_parameters(any_server: FhirServer, chart: Chart) -> None:
    assert _observations(any_server, chart, code=f"{LOINC}|8867-4") == ["hr1", "hr2"]
    assert _observations(any_server, chart, code="8867-4,59408-5") == ["hr1", "hr2", "spo2"]
    assert _observations(any_server, chart, code="http://snomed.info/sct|8867-4") == []
    assert _observations(any_server, chart, code="|8867-4") == []
    assert _observations(any_server, chart, status="amended") == ["temp"]
    assert _observations(any_server, chart, **{"status:not": "amended"}) == ["hr1", "hr2", "spo2"]
    assert _observations(any_server, chart, **{"encounter:missing": "true", "code": "8310-5"}) == ["temp"]
    subject = _search(any_server, "/Observation", subject=f"Patient/{chart.patient_id}")
    assert len(_labels(chart, subject)) == 4
    assert _search(any_server, "/Observation", patient="someone-else")["total"] == 0


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        (["2024-03-01"], ["hr1", "spo2"]),
        (["eq2024-03"], ["hr1", "hr2", "spo2"]),
        (["ne2024-03-01"], ["hr2", "temp"]),
        (["gt2024-03-01"], ["hr2"]),
        (["ge2024-03-02"], ["hr2"]),
        (["lt2024-03-01"], ["temp"]),
        (["le2024-03-01"], ["hr1", "spo2", "temp"]),
        (["sa2024-03-01"], ["hr2"]),
        (["eb2024-03-01"], ["temp"]),
        (["ge2024-03-01T10:30:00Z"], ["hr2", "spo2"]),
        (["ge2024-03-01T19:30:00+09:00"], ["hr2", "spo2"]),
        (["ge2024-03-01", "lt2024-03-02"], ["hr1", "spo2"]),
        (["2024-02-15T12:00:00Z"], []),
    ],
)
def test_date_prefixes(any_server: FhirServer, chart: Chart, dates: list[str], expected: list[str]) -> None:
    params = [("patient", chart.patient_id), *(("date", d) for d in dates)]
    with any_server.client() as client:
        bundle = client.get("/Observation", params=params).json()
    assert sorted(_labels(chart, bundle)) == sorted(expected)


def test_paging_links(any_server: FhirServer, chart: Chart) -> None:
    first = _search(any_server, "/Observation", patient=chart.patient_id, _count=3)
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert set(links) == {"self", "next"}
    assert "total" not in first  # not counted unless asked for
    with httpx.Client(headers=any_server.headers(), timeout=30) as client:
        second = client.get(links["next"]).json()
    assert {link["relation"] for link in second["link"]} == {"self", "previous"}
    assert len(_labels(chart, first)) == 3 and len(_labels(chart, second)) == 1
    assert set(_labels(chart, first)) | set(_labels(chart, second)) == set(chart.ids)
    counted = _search(any_server, "/Observation", patient=chart.patient_id, _count=2, _total="accurate")
    assert counted["total"] == 4
    summary = _search(any_server, "/Observation", patient=chart.patient_id, _summary="count")
    assert summary["total"] == 4 and not summary.get("entry")


def test_sort(any_server: FhirServer, chart: Chart) -> None:
    assert _observations(any_server, chart, _sort="-date") == ["hr2", "spo2", "hr1", "temp"]
    assert _observations(any_server, chart, _sort="date") == ["temp", "hr1", "spo2", "hr2"]
    assert _observations(any_server, chart, _sort="status,-date") == ["temp", "hr2", "spo2", "hr1"]


def test_include_the_patient(any_server: FhirServer, chart: Chart) -> None:
    bundle = _search(
        any_server, "/Observation", patient=chart.patient_id, code="8310-5", _include="Observation:patient"
    )
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"]]
    assert modes == [("match", "Observation"), ("include", "Patient")]
    assert bundle["entry"][1]["resource"]["id"] == chart.patient_id


def test_last_updated(any_server: FhirServer, chart: Chart) -> None:
    with any_server.client() as client:
        stamp = client.get(f"/Observation/{chart.ids['hr1']}").json()["meta"]["lastUpdated"]
    assert _observations(any_server, chart, _lastUpdated="lt2000-01-01") == []
    # hr1 was written first: the others were updated after it, to the microsecond.
    assert _observations(any_server, chart, _lastUpdated=f"gt{stamp}") == ["hr2", "spo2", "temp"]
    assert _observations(any_server, chart, _lastUpdated=f"le{stamp}") == ["hr1"]
    assert set(_observations(any_server, chart, _lastUpdated="ge2000-01-01")) == set(chart.ids)


def test_patient_identifier_and_names(any_server: FhirServer, chart: Chart) -> None:
    def ids(**params: Any) -> list[str]:
        return [e["resource"]["id"] for e in _search(any_server, "/Patient", **params).get("entry", [])]

    assert ids(identifier=f"{MRN}|{chart.mrn}") == [chart.patient_id]
    assert ids(identifier=chart.mrn) == [chart.patient_id]
    assert chart.patient_id in ids(family="simic")  # accents and case ignored, prefix match
    assert chart.patient_id in ids(**{"name:contains": "IMI", "identifier": chart.mrn})
    assert ids(family="imic", identifier=chart.mrn) == []
    assert ids(_id=chart.patient_id) == [chart.patient_id]
