"""FHIR R4 REST API: fhir.resources R4B models, required-binding checks, search, bundles, SMART scopes."""
