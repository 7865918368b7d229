"""The one exception type that the CLI turns into a one-line error and exit code 2."""


class BnlabError(Exception):
    """A user-facing error: bad input, missing data, impossible option.

    The message must be one line that says what went wrong and what to do about it.
    """
