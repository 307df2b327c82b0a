"""Why a result object cannot be built. Messages name the rule and carry identifiers only (UIDs,
codes, shapes), never patient attributes."""

from __future__ import annotations


class ResultObjectError(ValueError):
    """The read, its sources or its mask cannot make a valid SR or SEG; the message names the
    rule (PS3.3 / PS3.16 section) the input breaks."""
