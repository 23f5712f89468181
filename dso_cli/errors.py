"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class DsoError(Exception):
    """Bad input from the user (config value, path, artifact): reported without a traceback."""
