"""The Celery application: broker choice, queues, priorities and delivery guarantees.

One function, :func:`create_celery`, builds the app from :class:`clinic.settings.Settings`; nothing
is configured at import time. Tasks write their results to the database, so there is no result
backend.

Delivery (DESIGN.md §4 rule 3): ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1, so a task
is acknowledged only after it ran and a worker holds at most one unstarted task. Where the broker
cannot give a lost message back (the embedded transport, a killed worker), the analysis job's lease
does (clinic.ai.service.requeue_expired, run by the relay).

Priorities (AMQP semantics, 0-9, higher is sooner; :func:`broker_priority` maps them):

* RabbitMQ: queues declared with ``x-max-priority`` 10.
* Redis: kombu keeps one list per priority step and pops the *lowest* step first, so the value
  sent is ``9 - priority``.
* Embedded (``clinicfs``): message files sort by priority (worker.fs_transport).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from clinic.ai.service import ANALYSE_STUDY_TASK
from clinic.fhirpush.service import PUSH_TASK as FHIR_PUSH_TASK
from clinic.imaging.priors import FETCH_PRIORS_TASK
from clinic.messages.outbound import DELIVER_TASK as HL7_DELIVER_TASK
from clinic.results.service import BUILD_RESULTS_TASK, DELIVER_RESULT_TASK
from clinic.settings import Settings
from worker import fs_transport

INGEST = "ingest"
INFERENCE_CPU = "inference.cpu"
INFERENCE_GPU = "inference.gpu"
OUTBOUND = "outbound"
ALL_QUEUES = (INGEST, INFERENCE_CPU, INFERENCE_GPU, OUTBOUND)

MAX_PRIORITY = 9

#: Seconds to wait for a broker connection when publishing. A loopback connect either succeeds in
#: about a millisecond or is refused at once; 2 s only matters for a remote host that drops packets
#: and keeps the relay from stalling behind it (the outbox row is retried later).
PUBLISH_CONNECT_TIMEOUT_S = 2.0


def broker_kind(settings: Settings) -> str:
    """``embedded``, ``redis`` or ``amqp``."""
    if settings.is_embedded_broker:
        return "embedded"
    scheme = settings.broker_url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "redis+socket"):
        return "redis"
    return "amqp"


def inference_queue(settings: Settings) -> str:
    """The queue analysis jobs go to: GPU workers consume ``inference.gpu``."""
    return INFERENCE_GPU if settings.inference_device == "cuda" else INFERENCE_CPU


def clamp_priority(priority: int) -> int:
    return max(0, min(MAX_PRIORITY, int(priority)))


class ClinicCelery(Celery):
    """Celery app that knows the platform settings it was built from."""

    clinic_settings: Settings
    clinic_broker_kind: str


def broker_priority(app: Celery, priority: int) -> int:
    """The priority value to send for a domain priority (0-9, higher is sooner)."""
    value = clamp_priority(priority)
    if getattr(app, "clinic_broker_kind", "") == "redis":
        return MAX_PRIORITY - value
    return value


def _queues(kind: str) -> list[Queue]:
    arguments: dict[str, Any] | None = {"x-max-priority": MAX_PRIORITY + 1} if kind == "amqp" else None
    return [
        Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)
        for name in ALL_QUEUES
    ]


def _broker_options(settings: Settings, kind: str) -> tuple[str, dict[str, Any]]:
    if kind == "embedded":
        fs_transport.register()
        options: dict[str, Any] = dict(fs_transport.folder_options(settings.broker_dir))
        # Measured here: 10 ms polling gives ~12 ms per hop; kombu's default 1 s adds a second.
        options["polling_interval"] = settings.broker_polling_interval
        return f"{fs_transport.ALIAS}://localhost//", options
    if kind == "redis":
        return settings.broker_url, {
            "visibility_timeout": settings.broker_visibility_timeout,
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_connect_timeout": PUBLISH_CONNECT_TIMEOUT_S,
        }
    # Publisher confirms: a publish returns once RabbitMQ has the message, so an outbox row is
    # marked published only when the broker really took it.
    return settings.broker_url, {"confirm_publish": True}


def create_celery(settings: Settings) -> ClinicCelery:
    """The platform's Celery app for *settings* (embedded filesystem broker, Redis or RabbitMQ)."""
    kind = broker_kind(settings)
    broker_url, transport_options = _broker_options(settings, kind)
    app = ClinicCelery("clinic", set_as_current=False)
    app.clinic_settings = settings
    app.clinic_broker_kind = kind
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_timeout=PUBLISH_CONNECT_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for its broker to come back
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=_queues(kind),
        task_default_queue=INGEST,
        task_default_exchange=INGEST,
        task_default_routing_key=INGEST,
        task_queue_max_priority=MAX_PRIORITY + 1 if kind == "amqp" else None,
        # Messages sent without a priority count as routine (on Redis, 9 is the routine list).
        task_default_priority=MAX_PRIORITY if kind == "redis" else None,
        task_create_missing_queues=False,
        task_routes={
            ANALYSE_STUDY_TASK: {"queue": inference_queue(settings)},
            FETCH_PRIORS_TASK: {"queue": INGEST},
            BUILD_RESULTS_TASK: {"queue": OUTBOUND},
            DELIVER_RESULT_TASK: {"queue": OUTBOUND},
            HL7_DELIVER_TASK: {"queue": OUTBOUND},
            FHIR_PUSH_TASK: {"queue": OUTBOUND},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        # Remote control rides on a fanout "pidbox" exchange; with the filesystem transport every
        # worker that ever ran would leave a queue of broadcasts behind. Off in embedded mode.
        worker_enable_remote_control=kind != "embedded",
    )

    from worker import fhir_tasks, hl7_tasks, priors_tasks, results_tasks, tasks

    tasks.register(app, settings)
    priors_tasks.register(app, settings)
    results_tasks.register(app, settings)
    hl7_tasks.register(app, settings)
    fhir_tasks.register(app, settings)
    return app
