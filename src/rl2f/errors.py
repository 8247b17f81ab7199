"""Errors that reach the user as one line: what was wrong and where (file, row, field)."""


class UserError(Exception):
    """Bad input or environment the user can fix; the CLI prints it without a traceback."""


class DataError(UserError):
    """A data file or row does not meet its contract."""
