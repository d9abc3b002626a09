"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a refused request; the message says what, where and how to fix it."""
