"""The inbound message store: every HL7 v2 message as received, with its status (DESIGN.md §4)."""
