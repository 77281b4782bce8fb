"""Errors that the user can fix: entry points print their message, not a stack trace."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class FfdError(Exception):
    """Bad input or a missing resource; the message says what was wrong and how to fix it."""


class ConfigError(FfdError, ValueError):
    """A setting has a value ffd can't use."""


def exit_on_user_error(run: Callable[[], T]) -> T:
    """Run an entry point's work; on an FfdError log its message and exit with status 2.

    Hydra wraps errors raised while instantiating objects, so the user's error
    is looked for along the chain of causes.
    """
    try:
        return run()
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, FfdError):
            cause = cause.__cause__
        if cause is None:
            raise
        logging.getLogger("ffd").error("%s", cause)
        sys.exit(2)
