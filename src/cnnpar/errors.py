"""The errors the CLI turns into one line and an exit code (see `cli.EPILOG`)."""


class CnnparError(ValueError):
    """Bad input from the user (arguments, config, data files, output location)."""


class WriteError(OSError):
    """Writing an output failed (disk full, read-only file system, permission): one line naming
    the file and the cause, exit 1. An OSError, so callers that catch OSError still do."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the CLI so that cleanup (temporary run directories,
    worker processes) runs as it does for Ctrl-C. A BaseException, like KeyboardInterrupt, so
    that `except Exception` does not swallow it."""
