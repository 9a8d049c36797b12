"""User-facing errors: the CLI prints ``message`` on one line and exits with ``exit_code``."""

from __future__ import annotations

#: Exit code for bad input (config, dataset, CLI arguments). Kubernetes Jobs fail at once on it
#: instead of retrying a run that can never succeed.
EXIT_USAGE = 2


class AALError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(AALError):
    """One or more invalid configuration values; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config: " + "; ".join(self.problems))


class DatasetError(AALError):
    """The dataset is missing, malformed, or does not have the named attribute."""


class StoreError(AALError):
    """The store is unreachable, or an artifact is missing or fails its checksum."""


class StageOrderError(AALError):
    """A stage was asked for before the results it depends on exist."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or kept failing (5xx, timeouts, resets) after every retry.
    Worth retrying later, so a worker exits 1 (the cluster retries) rather than 2."""

    exit_code = 1
