"""HL7 v2 over MLLP: framing, decoding, acknowledgements, the listener and the message store.

The listener stores every framed message before it answers (DESIGN.md §4 rule 1) and processing
runs later, in arrival order, in :mod:`integrations.hl7v2.processor`. Mappings to domain commands
live in :mod:`integrations.hl7v2.mapping`.
"""
