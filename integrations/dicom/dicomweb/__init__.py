"""DICOMweb (PS3.18) on the platform's HTTP server, under ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS.

:mod:`.api` holds the routes; :mod:`.stow`, :mod:`.qido` and :mod:`.wado` the three services;
:mod:`.multipart` the ``multipart/related`` framing (RFC 2387) and media-type negotiation;
:mod:`.json_model` the DICOM JSON model (PS3.18 Annex F) and the per-file metadata cache.
"""
