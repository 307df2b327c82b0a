"""Every table of the platform, imported so that ``Base.metadata`` is complete (Alembic, tests)."""

from clinic.ai.models import AIFinding, AIMeasurement, AIRead, AnalysisJob
from clinic.audit.models import AuditEvent
from clinic.auth.models import User
from clinic.db import Base
from clinic.encounters.models import Encounter
from clinic.fhirpush.models import FhirOutbound, FhirOutboundAttempt
from clinic.fhirstore.models import SEARCH_INDEX, FhirConditionalClaim, FhirResource, FhirResourceVersion
from clinic.imaging.models import Instance, ReceiveFailure, Series, Study, StudyPrior
from clinic.messages.models import HL7Message, OutboundHL7, OutboundHL7Attempt
from clinic.network.models import RemoteAE
from clinic.observations.models import Observation
from clinic.orders.models import ImagingOrder
from clinic.outbox.models import OutboxMessage
from clinic.patients.models import Patient, PatientIdentifier
from clinic.results.models import Delivery, DeliveryAttempt, ResultObject

__all__ = [
    "FhirOutbound",
    "FhirOutboundAttempt",
    "FhirConditionalClaim",
    "FhirResource",
    "FhirResourceVersion",
    "SEARCH_INDEX",
    "PatientIdentifier",
    "OutboundHL7Attempt",
    "OutboundHL7",
    "Observation",
    "ImagingOrder",
    "HL7Message",
    "Encounter",
    "AIFinding",
    "AIMeasurement",
    "AIRead",
    "AnalysisJob",
    "AuditEvent",
    "Delivery",
    "DeliveryAttempt",
    "Base",
    "Instance",
    "OutboxMessage",
    "Patient",
    "ReceiveFailure",
    "RemoteAE",
    "ResultObject",
    "Series",
    "Study",
    "StudyPrior",
    "User",
]
