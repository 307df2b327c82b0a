"""DICOM: DIMSE service class providers and users (pynetdicom)."""
