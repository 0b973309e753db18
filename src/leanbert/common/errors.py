"""The one error type that reaches a user as a single line (and exit code 2) instead of a traceback."""


class LeanbertError(Exception):
    """Bad input or a refused operation; the message names the file, field or setting and is shown as is."""
