"""Encounters (visits): where a patient is and who looks after them (HL7 PV1, FHIR Encounter)."""
