"""Imaging orders (HL7 ORM^O01 / OMI^O23, FHIR ServiceRequest): why an image was taken."""
