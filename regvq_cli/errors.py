"""The one exception type that the CLI turns into a clean one-line error (exit code 1)."""


class RegvqError(Exception):
    """A user-facing error: the message is one line that says what went wrong and what to do."""


class TrainingStopped(RegvqError):
    """A training run stopped by a signal after saving its checkpoint; the CLI exits with 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
