"""User-facing errors: the CLI prints ``message`` on one line and exits with ``exit_code``."""

from __future__ import annotations

import os
import re

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


class CorruptRecordError(StoreError):
    """A run's commit record exists but is truncated, unsealed or altered: the run counts as not
    committed, and ``submit`` (or its worker) moves the record aside so that the run is retrained."""


class StageOrderError(AALError):
    """A stage was asked for before the results it depends on exist."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or kept failing (5xx, timeouts, resets) after every retry.
    Worth retrying later, so a worker exits 1 (the cluster retries) rather than 2."""

    exit_code = 1


#: Environment variables whose values are credentials (boto3's chain reads them).
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SIGNING = re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s\"']+|(Credential=)[^,\s]+", re.IGNORECASE)
# user:password@ (or a lone token@) after a scheme; the host part ends at the first /, space or quote
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s\"']+@")


def scrub(text: str) -> str:
    """``text`` without credentials: values of the AWS_* secret variables, signing parameters and
    ``user:password@`` in URLs are replaced by ``***``. Applied to everything the CLI and the
    worker print or record, since a message may quote a URL or a library's error verbatim."""
    text = str(text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _SIGNING.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)
    return _URL_USERINFO.sub(r"\1***@", text)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` scrubbed and folded onto one line (library errors can span many)."""
    return " ".join(scrub(text).split())[:limit]
