"""Where a FHIR transaction's time goes: the app in this process, timers around its phases.

    .venv/bin/python bench/fhir_phases.py [--rounds 20] [--entries 100] [--database postgres|sqlite]
                                          [--no-freeze]

The same Bundles as ``bench/fhir_transaction.py`` (new vital signs each round, one Patient) go
through the platform's app with Starlette's test client, in one process, after three warm-up
rounds. Named functions are wrapped with timers (times are inclusive: a phase's figure contains
the phases it calls) and the collector's pauses are timed through ``gc.callbacks``. By default
the start-up heap is frozen first, as ``clinic up`` does (``clinicctl.serve.settle_heap``);
``--no-freeze`` shows what the full collections cost without it. The timers add a few per cent.
Prints milliseconds per Bundle, with the bare fhir.resources parse of the same Bundles beside.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fhir_transaction import admin_token, bare_seconds, database, settings_for, transaction_bundle  # noqa: E402

#: (module, attribute, label): the phases, outermost first.
PHASES = (
    ("integrations.fhir.api", "FhirApi._run", "request in the app (token, work, audit, commit)"),
    ("integrations.fhir.api", "authenticate", "  token check"),
    ("integrations.fhir.bundle", "transaction", "  transaction"),
    ("integrations.fhir.interactions", "Interactions.check", "    validation, per entry"),
    ("integrations.fhir.validation", "vital_signs_issues", "      vital-signs profile checks"),
    ("integrations.fhir.interactions", "Interactions.check_references", "    reference check"),
    ("integrations.fhir.domain.observation", "ObservationProvider._create_vitals", "    vital signs written"),
    ("integrations.fhir.domain.observation", "upsert_observations", "      domain upsert"),
    ("integrations.fhir.domain.base", "ProjectedProvider.project_many", "      FHIR projections"),
    ("integrations.fhir.domain.observation", "observation_body", "        projection bodies"),
    ("integrations.fhir.domain.base", "index_entries", "        index entries"),
    ("clinic.fhirstore.service", "create_many", "        store: create"),
    ("clinic.fhirstore.service", "_copy_rows", "          COPY (PostgreSQL)"),
    ("sqlalchemy.orm", "Session.commit", "  commit"),
)


def instrument(totals: dict[str, float]) -> None:
    import importlib

    for module_name, attribute, label in PHASES:
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, __original: Any = original, __label: str = label, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[__label] += time.perf_counter() - start

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--no-freeze", action="store_true", help="leave the start-up heap to the collector")
    args = parser.parse_args()
    totals: dict[str, float] = collections.defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        data_dir = Path(tmp)
        token = admin_token(url, data_dir)
        from fastapi.testclient import TestClient

        from clinicctl.webapp import build_app

        instrument(totals)
        app = build_app(settings_for(url, data_dir))
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "Prefer": "return=minimal",
        }
        with TestClient(app, base_url="http://bench/fhir", headers=headers) as client:
            patient = {"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": "phases"}]}
            created = client.post("/Patient", json=patient)
            patient_id = created.headers["Location"].split("/Patient/")[1].split("/")[0]
            bodies = [
                json.dumps(transaction_bundle(patient_id, args.entries, r)).encode()
                for r in range(args.rounds + 3)
            ]
            for body in bodies[:3]:
                client.post("", content=body).raise_for_status()
            if not args.no_freeze:
                gc.collect()
                gc.freeze()
            started: list[float] = []

            def pauses(phase: str, info: dict[str, Any]) -> None:
                if phase == "start":
                    started.append(time.perf_counter())
                elif started:
                    totals[f"collector pauses, generation {info['generation']}"] += (
                        time.perf_counter() - started.pop()
                    )

            gc.callbacks.append(pauses)
            totals.clear()
            begin = time.perf_counter()
            for body in bodies[3:]:
                client.post("", content=body).raise_for_status()
            whole = (time.perf_counter() - begin) / args.rounds
            gc.callbacks.remove(pauses)
        bare = sorted(bare_seconds(body) for body in bodies[3:])[args.rounds // 2]
    print(f"FHIR transaction of {args.entries} vital signs, {args.database}, {args.rounds} rounds")
    print(f"| phase | ms per Bundle |\n|---|---:|\n| whole POST (test client) | {whole * 1000:.1f} |")
    for _, _, label in PHASES:
        print(f"| {label} | {totals.pop(label, 0.0) / args.rounds * 1000:.2f} |")
    for label, seconds in sorted(totals.items()):
        print(f"| {label} | {seconds / args.rounds * 1000:.2f} |")
    print(f"| bare fhir.resources parse + validate (median) | {bare * 1000:.1f} |")


if __name__ == "__main__":
    main()
