"""Errors that the user can fix: entry points print their message, not a stack trace."""


class FfdError(Exception):
    """Bad input or a missing resource; the message says what was wrong and how to fix it."""


class ConfigError(FfdError, ValueError):
    """A setting has a value ffd can't use."""
