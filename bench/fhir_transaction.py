"""FHIR transaction ingest: a Bundle of vital-sign Observations POSTed to ``/fhir``, resources per
second, against the bare cost of parsing and validating the same Bundle with fhir.resources.

    .venv/bin/python bench/fhir_transaction.py [--entries 100] [--rounds 30] [--database postgres|sqlite]

The server is the platform's app (``clinicctl.webapp.build_app``) under uvicorn in a subprocess
(one process, as ``clinic up`` runs it), on a fresh PostgreSQL database (durable commit:
``synchronous_commit`` as the server has it, normally ``on``) or SQLite (WAL, ``synchronous=FULL``).
Each round is one transaction of *entries* Observations (``Prefer: return=minimal``) referring
to one Patient; the rate is entries / wall time of the POST, measured from the client. The bare
rate is ``Bundle.model_validate(json.loads(raw))`` of the same Bundle in this process, taken in
the same round just before the POST (the machine's load changes both alike). Target:
ingest ≥ 0.5 × bare.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

PG_ADMIN_DSN = os.environ.get(
    "CLINIC_BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL = os.environ.get("CLINIC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
SECRET = "bench-signing-key-not-for-production-use"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: (LOINC, UCUM unit, typical value): the NEWS2 vital signs.
VITALS = [
    ("8867-4", "/min", 82),
    ("9279-1", "/min", 18),
    ("59408-5", "%", 96),
    ("8310-5", "Cel", 37.1),
    ("8480-6", "mm[Hg]", 121),
    ("8462-4", "mm[Hg]", 78),
]


def vital_sign(patient_id: str, n: int, base_time: float = 1_704_067_200.0) -> dict[str, Any]:
    code, unit, value = VITALS[n % len(VITALS)]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base_time + n * 600))
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def transaction_bundle(patient_id: str, entries: int, round_no: int = 0) -> dict[str, Any]:
    """*entries* new vital signs: each round's are taken at other times (a monitor's next
    readings), so that every round ingests new observations rather than re-posting the last."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": vital_sign(patient_id, round_no * entries + n),
                "request": {"method": "POST", "url": "Observation"},
            }
            for n in range(entries)
        ],
    }


@contextmanager
def database(kind: str, data_dir: Path) -> Iterator[str]:
    """A fresh, migrated database; its URL."""
    from clinic.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{data_dir / 'clinic.db'}"
        upgrade(url)
        yield url
        return
    import psycopg

    name = f"clinic_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_URL.format(name=name)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(url: str, data_dir: Path) -> Any:
    from clinic.settings import Environment, Settings

    return Settings(data_dir=data_dir, database_url=url, environment=Environment.TEST, secret_key=SECRET)


def admin_token(url: str, data_dir: Path) -> str:
    from clinic.auth.service import create_user, issue_token
    from clinic.db import make_engine, make_session_factory, unit_of_work

    settings = settings_for(url, data_dir)
    engine = make_engine(url)
    with unit_of_work(make_session_factory(engine)) as session:
        user = create_user(session, f"bench-{uuid.uuid4().hex[:6]}", "bench-password", "admin")
        session.flush()
        token = issue_token(settings, user)
    engine.dispose()
    return token


@contextmanager
def server(url: str, data_dir: Path) -> Iterator[str]:
    """The platform's HTTP component (``clinicctl.serve``, as ``clinic up`` runs it) in a
    subprocess; its FHIR base URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (  # the HTTP component exactly as ``clinic up`` runs it
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from clinic.settings import Settings, Environment;"
        "from clinicctl.serve import serve;"
        "s = Settings(data_dir=Path(sys.argv[3]), database_url=sys.argv[2], environment=Environment.TEST,"
        " secret_key=sys.argv[5], http_host='127.0.0.1', http_port=int(sys.argv[4]));"
        "serve(s, 'http')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO_ROOT), url, str(data_dir), str(port), SECRET]
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/metadata", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def bare_seconds(raw: bytes) -> float:
    """Parsing + validating the Bundle with fhir.resources, in this process, with no garbage of
    earlier rounds left for the collector to find during the timing (the bare figure at its best)."""
    from fhir.resources.R4B.bundle import Bundle

    gc.collect()
    start = time.perf_counter()
    Bundle.model_validate(json.loads(raw))
    return time.perf_counter() - start


def measure(base: str, token: str, entries: int, rounds: int) -> tuple[list[float], list[float]]:
    """(ingest seconds, bare seconds) per round. The two are taken alternately, round by round,
    so that a change in the machine's load weighs on both alike."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/fhir+json",
        "Prefer": "return=minimal",
    }
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:bench", "value": f"bench-{time.time_ns()}"}],
            "gender": "female",
        }  # a Patient is the platform's patient: it needs an identifier (422 otherwise)
        created = client.post("/Patient", json=patient)
        created.raise_for_status()
        patient_id = created.headers["Location"].split("/Patient/")[1].split("/")[0]
        bodies = [json.dumps(transaction_bundle(patient_id, entries, r)).encode() for r in range(rounds + 3)]
        ingest, bare = [], []
        for n, body in enumerate(bodies):
            validated = bare_seconds(body)
            start = time.perf_counter()
            response = client.post("", content=body)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise SystemExit(f"transaction failed: {response.status_code} {response.text[:500]}")
            if n >= 3:  # the first rounds warm the server's and the models' caches
                ingest.append(elapsed)
                bare.append(validated)
    return ingest, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        data_dir = Path(tmp)
        token = admin_token(url, data_dir)
        with server(url, data_dir) as base:
            ingest, bare = measure(base, token, args.entries, args.rounds)
        commit = "synchronous=FULL (WAL)"
        if args.database == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_DSN) as conn:
                row = conn.execute("SHOW synchronous_commit").fetchone()
                commit = f"synchronous_commit={row[0] if row else '?'}"
    bare_rate = args.entries / statistics.median(bare)
    rate = args.entries / statistics.median(ingest)
    ratios = sorted(b / i for b, i in zip(bare, ingest, strict=True))
    times_ms = sorted(t * 1000 for t in ingest)
    print(f"| FHIR transaction, {args.entries} vital-sign Observations | {args.database} ({commit}) |")
    print("|---|---|")
    print(f"| bare fhir.resources parse + validate (median of {len(bare)}) | {bare_rate:,.0f} entries/s |")
    print(f"| ingest through POST /fhir (median of {len(ingest)}) | {rate:,.0f} entries/s |")
    print(f"| transaction latency p50 / max | {statistics.median(times_ms):.1f} ms / {times_ms[-1]:.1f} ms |")
    print(
        f"| ingest / bare: of the medians; median of round-by-round ratios | {rate / bare_rate:.2f}; "
        f"{statistics.median(ratios):.2f} (target >= 0.5) |"
    )


if __name__ == "__main__":
    main()
