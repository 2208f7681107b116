"""Exceptions for mistakes a user can fix (bad data, bad options).

The command line turns these into one ``rankdistill: error: ...`` line; anything
else is a bug and keeps its traceback.
"""


class RankdistillError(ValueError):
    """Base class of the errors caused by the user's input."""


class DataError(RankdistillError):
    """A data, split or checkpoint file is malformed or inconsistent."""


class ConfigError(RankdistillError):
    """An option or a combination of options is invalid."""


class TrainingDiverged(RankdistillError):
    """Training produced a non-finite loss or parameter, or a model scored
    NaN or infinity: no result of it can be trusted."""
