"""Exceptions raised by tidegauge, with the command line's messages."""


class Error(Exception):
    """Base class of every tidegauge error."""


class MissingColumnError(Error, ValueError):
    """A column named in the call (key, value or time) is not in the data."""


class ColumnTypeError(Error, TypeError):
    """A column has the wrong type (e.g. a non-numeric value column), or the data is not
    Arrow data."""


class UnknownDetectorError(Error, ValueError):
    """No detector (or component) of that name."""


class ParamError(Error, ValueError):
    """A detector setting is unknown or out of range."""


class InvalidPipelineError(Error, ValueError):
    """A pipeline file that does not load or check: the message is what `tidegauge check`
    prints, every problem with its line."""


class PipelineError(Error, RuntimeError):
    """A pipeline that could not be built (a file or server it names cannot be opened) or
    whose components failed while it ran; the message is what `tidegauge run` prints."""
