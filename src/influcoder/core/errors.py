"""Errors meant for the user: printed as one line by the CLI, with a non-zero exit and no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request; the message says what is wrong and where."""
