"""The one error type that reaches a user as a single line (and exit code 2) instead of a traceback."""


class LeanbertError(Exception):
    """Bad input or a refused operation; the message names the file, field or setting and is shown as is."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type if it has none), for a one-line report."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_integer(name: str, value, low: int, high: int | None = None) -> None:
    """Refuse a setting that is not an integer (bools and floats are not) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise LeanbertError(f"{name} must be an integer {bounds}, got {value!r}")
