"""Generic FHIR resource storage: versioned JSON plus a search index computed at write time."""
