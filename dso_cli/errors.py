"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class DsoError(Exception):
    """Bad input from the user (config value, path, artifact): reported without a traceback."""


def first_line(exc: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message (library errors can run to pages), for a one-line error;
    ``empty`` (default: the exception's type name) when the message is blank."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if empty is None else empty
    return text.splitlines()[0].strip()
