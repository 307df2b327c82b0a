"""Concurrent writes against the real server, on SQLite and PostgreSQL: 50 identical conditional
creates make one resource, stale ETags get 412, racing conditional updates make one resource."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integrations.fhir.conftest import MRN, FhirServer, create, patient, unique

RACERS = 50


def _race(count: int, send: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """*count* requests released at once, each on its own connection."""
    gate = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            gate.wait()
            return send(client)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_identical_conditional_creates_make_one_resource(any_server: FhirServer) -> None:
    mrn = unique("mrn")
    headers = any_server.headers(**{"If-None-Exist": f"identifier={MRN}|{mrn}"})
    responses = _race(
        RACERS, lambda c: c.post(f"{any_server.base}/Patient", json=patient(mrn), headers=headers)
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: RACERS - 1}, [r.text for r in responses if r.status_code >= 300][:3]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert (
        any_server.count(
            "SELECT count(*) FROM fhir_search_index WHERE param = 'identifier' AND value = :v", v=mrn
        )
        == 1
    )
    with any_server.client() as client:
        found = client.get("/Patient", params={"identifier": f"{MRN}|{mrn}"}).json()
    assert found["total"] == 1


def test_fifty_identical_conditional_transactions_make_one_resource(any_server: FhirServer) -> None:
    mrn = unique("mrn")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7d3e2a8c-0000-4000-8000-000000000001",
                "resource": patient(mrn),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|{mrn}"},
            }
        ],
    }
    racers = 20
    responses = _race(racers, lambda c: c.post(any_server.base, json=bundle, headers=any_server.headers()))
    assert Counter(r.status_code for r in responses) == {200: racers}, [r.text for r in responses][:2]
    statuses = Counter(r.json()["entry"][0]["response"]["status"] for r in responses)
    assert statuses == {"201 Created": 1, "200 OK": racers - 1}
    assert (
        any_server.count(
            "SELECT count(*) FROM fhir_search_index WHERE param = 'identifier' AND value = :v", v=mrn
        )
        == 1
    )


def test_concurrent_updates_with_the_same_etag_let_one_through(any_server: FhirServer) -> None:
    created = create(any_server, patient(unique("mrn")))
    url = f"{any_server.base}/Patient/{created['id']}"
    writers = 12

    def send(client: httpx.Client) -> httpx.Response:
        body = {**created, "gender": "other"}
        return client.put(url, json=body, headers=any_server.headers(**{"If-Match": 'W/"1"'}))

    responses = _race(writers, send)
    assert Counter(r.status_code for r in responses) == {200: 1, 412: writers - 1}
    refused = next(r for r in responses if r.status_code == 412).json()
    assert refused["resourceType"] == "OperationOutcome"
    assert refused["issue"][0]["code"] == "conflict"
    with any_server.client() as client:
        current = client.get(url)
        history = client.get(f"{url}/_history").json()
    assert current.headers["ETag"] == 'W/"2"'
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_concurrent_conditional_updates_make_one_resource(any_server: FhirServer) -> None:
    mrn = unique("mrn")
    url = f"{any_server.base}/Patient?identifier={MRN}|{mrn}"
    writers = 20
    responses = _race(writers, lambda c: c.put(url, json=patient(mrn), headers=any_server.headers()))
    assert Counter(r.status_code for r in responses) == {201: 1, 200: writers - 1}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    (only,) = ids
    # Every request wrote a version of the one resource: nothing was lost or duplicated.
    with any_server.client() as client:
        history = client.get(f"/Patient/{only}/_history", params={"_count": 100}).json()
    assert history["total"] == writers
    assert sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"]) == list(
        range(1, writers + 1)
    )
