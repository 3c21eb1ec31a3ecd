"""User-facing errors.

Every problem a user can cause (bad data, bad flags, missing files) is raised as
:class:`TollError` with a one-line message that names the problem and the fix. The CLI
prints the message and exits with status 2 instead of showing a traceback from JAX.
"""
from __future__ import annotations


class TollError(ValueError):
    """A problem with the user's input, data or configuration (message says how to fix it)."""
