"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class CnnparError(ValueError):
    """Bad input from the user (arguments, config, data files, output location)."""
