"""FHIR search latency on 100,000 Observations: ``patient=…&code=…&date=ge…``, p50 and p99.

    .venv/bin/python bench/fhir_search.py [--observations 100000] [--patients 100] [--queries 200]
                                         [--database postgres|sqlite]

The Observations (vital signs, six LOINC codes, one every ~3 hours per patient through 2024) are
loaded with the store's bulk path (``clinic.fhirstore.service.create_many``: COPY on PostgreSQL)
and the search index the API computes at write time, not through HTTP. Then ANALYZE, and the
queries run twice: through ``GET /fhir/Observation`` on the platform's app under uvicorn (token
check, audit row and commit included), and straight against the store (the SQL alone).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from fhir_transaction import LOINC, admin_token, database, server, vital_sign  # noqa: E402

YEAR_START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
BATCH = 5_000


def load(url: str, patients: int, observations: int) -> tuple[list[str], float]:
    from sqlalchemy import text

    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.fhirstore import service as store
    from integrations.fhir.search import index_entries

    engine = make_engine(url)
    factory = make_session_factory(engine)
    patient_ids = [str(uuid.uuid4()) for _ in range(patients)]
    start = time.perf_counter()
    with unit_of_work(factory) as session:
        store.create_many(
            session,
            [
                store.NewResource("Patient", pid, {"resourceType": "Patient", "gender": "unknown"})
                for pid in patient_ids
            ],
        )
    per_patient = observations // patients
    spacing = 365 * 86400 / per_patient
    rng = random.Random(7)
    pending: list[store.NewResource] = []
    for n in range(observations):
        pid = patient_ids[n % patients]
        body = vital_sign(pid, rng.randrange(6), YEAR_START + (n // patients) * spacing)
        pending.append(
            store.NewResource("Observation", str(uuid.uuid4()), body, index_entries("Observation", body))
        )
        if len(pending) == BATCH or n == observations - 1:
            with unit_of_work(factory) as session:
                store.create_many(session, pending)
            pending = []
    # Statistics and the visibility map, as autovacuum would leave them after a bulk load.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if url.startswith("postgresql") else "ANALYZE"))
    engine.dispose()
    return patient_ids, time.perf_counter() - start


def load_domain(url: str, patients: int, observations: int, fresh: bool) -> tuple[list[str], float, float]:
    """Domain patients and vital signs, as HL7 v2 and FHIR POSTs leave them (``observations``
    rows, upserted in batches), then their FHIR views projected by the first sync (the bulk path
    a read takes after a backlog); patient ids, load seconds, projection seconds. Unless *fresh*,
    the rows are then dated as if recorded when observed (PostgreSQL only)."""
    import datetime as dt

    from sqlalchemy import text

    from clinic.db import make_engine, make_session_factory, unit_of_work
    from clinic.observations.service import ObservationIn, upsert_observations
    from clinic.patients.models import Patient
    from integrations.fhir.domain.observation import FHIR_VITALS, ObservationProvider
    from integrations.fhir.domain.patient import PatientProvider

    engine = make_engine(url)
    factory = make_session_factory(engine)
    start = time.perf_counter()
    with unit_of_work(factory) as session:
        rows = [
            Patient(identifier=f"bench-{n}", issuer="urn:bench", name=f"Bench^{n}") for n in range(patients)
        ]
        session.add_all(rows)
        session.flush()
        patient_ids = [r.id for r in rows]
    per_patient = observations // patients
    spacing = 365 * 86400 / per_patient
    rng = random.Random(7)
    pending: list[ObservationIn] = []
    for n in range(observations):
        body = vital_sign("0", rng.randrange(6), YEAR_START + (n // patients) * spacing)
        loinc = body["code"]["coding"][0]["code"]
        pending.append(
            ObservationIn(
                patient_id=patient_ids[n % patients],
                source_code=loinc,
                source_system="LN",
                code=str(FHIR_VITALS[loinc]),
                observed_at=dt.datetime.fromisoformat(body["effectiveDateTime"]),
                value=float(body["valueQuantity"]["value"]),
                unit=body["valueQuantity"]["code"],
                source="fhir",
            )
        )
        if len(pending) == BATCH or n == observations - 1:
            with unit_of_work(factory) as session:
                upsert_observations(session, pending)
            pending = []
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    with unit_of_work(factory) as session:
        PatientProvider().sync(session)
        ObservationProvider().sync(session)
    projected = time.perf_counter() - start
    if not fresh:
        # The steady state of a ward: the vitals were recorded over the year, as they were taken,
        # and their views projected since; only the last minute's rows are new to a sync.
        with unit_of_work(factory) as session:
            session.execute(text("UPDATE observations SET recorded_at = observed_at"))
            session.execute(text("UPDATE patients SET updated_at = created_at - interval '1 day'"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if url.startswith("postgresql") else "ANALYZE"))
    engine.dispose()
    return [str(i) for i in patient_ids], loaded, projected


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def query_params(rng: random.Random, patient_ids: list[str]) -> dict[str, str]:
    return {"patient": rng.choice(patient_ids), "code": f"{LOINC}|8867-4", "date": "ge2024-10-01"}


def over_http(base: str, token: str, patient_ids: list[str], queries: int) -> tuple[list[float], float]:
    rng = random.Random(11)
    times, matches = [], []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for n in range(queries + 10):
            params = query_params(rng, patient_ids)
            begin = time.perf_counter()
            response = client.get("/Observation", params=params)
            elapsed = time.perf_counter() - begin
            response.raise_for_status()
            if n >= 10:
                times.append(elapsed * 1000)
                matches.append(len(response.json().get("entry", [])))
    return times, statistics.mean(matches)


def in_store(url: str, patient_ids: list[str], queries: int, domain: bool) -> list[float]:
    """The search in this process: the generic store's SQL, or for domain vital signs the
    provider the API uses (its incremental sync included)."""
    from clinic.db import make_engine, make_session_factory
    from integrations.fhir.domain.observation import ObservationProvider
    from integrations.fhir.providers import StoredProvider
    from integrations.fhir.search import parse_search

    engine = make_engine(url)
    factory = make_session_factory(engine)
    provider = ObservationProvider() if domain else StoredProvider("Observation")
    rng = random.Random(11)
    times = []
    with factory() as session:
        for n in range(queries + 10):
            request = parse_search("Observation", list(query_params(rng, patient_ids).items()))
            begin = time.perf_counter()
            provider.search(session, request)
            if n >= 10:
                times.append((time.perf_counter() - begin) * 1000)
        session.rollback()
    engine.dispose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--source",
        choices=["domain", "generic"],
        default="domain",
        help="domain: vital signs as the platform keeps them (observations rows and their FHIR "
        "views, which every read keeps current); generic: Observations in the FHIR store only",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="domain: leave every row just recorded (a backlog: each sync re-examines all of "
        "them) instead of dated over the year as a ward's steady state",
    )
    args = parser.parse_args()
    domain = args.source == "domain"
    projected = 0.0
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        data_dir = Path(tmp)
        if domain:
            fresh = args.fresh or args.database != "postgres"
            patient_ids, load_seconds, projected = load_domain(url, args.patients, args.observations, fresh)
        else:
            patient_ids, load_seconds = load(url, args.patients, args.observations)
        token = admin_token(url, data_dir)
        store_times = in_store(url, patient_ids, args.queries, domain)
        with server(url, data_dir) as base:
            http_times, mean_matches = over_http(base, token, patient_ids, args.queries)
    store_p50, store_p99 = percentiles(store_times)
    http_p50, http_p99 = percentiles(http_times)
    query = "patient=<id>&code=http://loinc.org|8867-4&date=ge2024-10-01"
    print(
        f"| FHIR search on {args.observations:,} {args.source} Observations ({args.patients} patients) "
        f"| {args.database} |"
    )
    print("|---|---|")
    rate = args.observations / load_seconds
    if domain:
        print(f"| load: domain rows, batches of {BATCH:,} | {load_seconds:.1f} s ({rate:,.0f}/s) |")
        view_rate = args.observations / projected
        print(f"| first sync: every FHIR view projected | {projected:.1f} s ({view_rate:,.0f}/s) |")
    else:
        print(f"| bulk load (COPY/INSERT + index) | {load_seconds:.1f} s ({rate:,.0f}/s) |")
    print(f"| query | `{query}` (~{mean_matches:.0f} matches on the first page of 20) |")
    label = f"GET /fhir/Observation p50 / p99 ({args.queries} queries)"
    print(f"| {label} | {http_p50:.1f} ms / {http_p99:.1f} ms |")
    where = "provider search, sync included" if domain else "store search only"
    print(f"| {where} p50 / p99 | {store_p50:.1f} ms / {store_p99:.1f} ms |")


if __name__ == "__main__":
    main()
