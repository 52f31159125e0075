"""The user-error types: what the CLI prints as one line instead of a traceback."""


class DeploytoolError(Exception):
    """A problem the user can fix.

    Parameters
    ----------
    what : str
        What went wrong.
    fix : str, optional
        How to fix it.
    """

    exit_code = 1

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what}. {self.fix}" if self.fix else f"{self.what}."


class UsageError(DeploytoolError):
    """A malformed command-line argument."""

    exit_code = 2
