"""The one error type the command line turns into exit code 2."""


class UsageError(Exception):
    """Bad usage or bad input: reported as one message on stderr, exit code 2."""
