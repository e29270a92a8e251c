"""The one exception type users see.

Anything raised as :class:`FaextractError` is a problem with the user's input (a file, a
variable, a config key), not a bug: the CLI prints its message on one line and exits with
status 2, without a traceback. Messages name the thing that is wrong and, where it helps, what
was expected and what was found.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (libraries raise pages), or its type's name
    when it has none: what a one-line error quotes of a library's complaint."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class FaextractError(Exception):
    """A user-facing error: bad input, bad config, incompatible files."""

    exit_code = 2


class DataError(FaextractError, ValueError):
    """The input data cannot be used as given."""


class ConfigError(FaextractError, ValueError):
    """A configuration key or value is wrong."""


class MissingVariableError(DataError):
    """A requested variable is not in the input; callers may reword it (e.g. "the checkpoint
    needs ...") using ``source``, ``variable`` and ``available``."""

    def __init__(self, source: str, variable: str, available: list[str]):
        super().__init__(
            f"{source}: unknown variable {variable!r}; available: {', '.join(available)}"
        )
        self.source, self.variable, self.available = source, variable, list(available)


class FaextractWarning(UserWarning):
    """Something the user should know that does not stop the job; the CLI prints it as one
    ``warning: ...`` line."""
