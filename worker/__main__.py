"""``python -m worker``: a Celery worker with the outbox relay, configured from ``CLINIC_*``.

python -m worker                         # all queues, solo pool, relay on
python -m worker -Q inference.gpu -P prefork -c 2 --no-relay
python -m worker --relay-only            # the relay alone
"""

from __future__ import annotations

import argparse
import logging
import sys

from clinic.settings import load_settings
from worker.app import ALL_QUEUES
from worker.main import POOLS, run_relay_forever, run_worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-Q", "--queues", default=",".join(ALL_QUEUES), help="comma-separated queues (default: all)"
    )
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-P", "--pool", choices=POOLS, default="solo")
    parser.add_argument("--no-relay", action="store_true", help="do not run the outbox relay here")
    parser.add_argument("--relay-only", action="store_true", help="run only the outbox relay")
    parser.add_argument("-l", "--loglevel", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    settings = load_settings()
    if args.relay_only:
        return run_relay_forever(settings)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown:
        print(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(ALL_QUEUES)}", file=sys.stderr)
        return 2
    return run_worker(
        settings,
        queues=queues,
        concurrency=args.concurrency,
        pool=args.pool,
        with_relay=not args.no_relay,
        loglevel=args.loglevel.upper(),
    )


if __name__ == "__main__":
    sys.exit(main())
