"""Wire formats and listeners: DICOM, HL7 v2, FHIR. Translate to and from domain commands."""
