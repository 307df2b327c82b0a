"""Errors the CLI reports as one clear line, without a traceback."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: the message says what went wrong and what to do."""
