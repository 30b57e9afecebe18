"""User-facing errors: the command-line entry points print these without a traceback."""


class UserError(Exception):
    """An error the user can fix (bad config, missing file, bad data); printed as a message."""


class ConfigError(UserError, ValueError):
    """A config field has a bad type or value; the message names the field and what is allowed."""


class DataError(UserError, ValueError):
    """A data set is missing, malformed or non-finite; the message names the data set and path."""


class DiskFullError(UserError, OSError):
    """No space left for a run's outputs; the message names the folder, the free and needed bytes."""


class DivergenceError(UserError, FloatingPointError):
    """Training produced a non-finite loss or metric; the message names the epochs and checkpoint."""
