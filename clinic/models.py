"""Every table of the platform, imported so that ``Base.metadata`` is complete (Alembic, tests)."""

from clinic.ai.models import AIFinding, AIRead, AnalysisJob
from clinic.audit.models import AuditEvent
from clinic.auth.models import User
from clinic.db import Base
from clinic.imaging.models import Instance, ReceiveFailure, Series, Study
from clinic.outbox.models import OutboxMessage
from clinic.patients.models import Patient

__all__ = [
    "AIFinding",
    "AIRead",
    "AnalysisJob",
    "AuditEvent",
    "Base",
    "Instance",
    "OutboxMessage",
    "Patient",
    "ReceiveFailure",
    "Series",
    "Study",
    "User",
]
