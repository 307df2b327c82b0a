"""Observations: vital signs from monitors (HL7 ORU^R01 / IHE PCD-01, FHIR Observation)."""
