"""The one exception type that the CLI turns into a clean one-line error (exit code 1)."""


class RegvqError(Exception):
    """A user-facing error: the message is one line that says what went wrong and what to do."""
