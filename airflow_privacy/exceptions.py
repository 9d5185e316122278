"""Every exception airflow-privacy raises, in one hierarchy.

All derive from :class:`AirflowPrivacyError`, so a caller can catch "anything
this package refused" in one clause. Below it the classes say whether a retry
can help, which is what the Airflow operators need to know: a task that fails
on a :class:`RetryableError` (a storage outage) is left to Airflow's retry
policy, any other :class:`AirflowPrivacyError` fails the task at once
(``AirflowFailException``), because running the same settings, model, key or
manifest again gives the same answer and would only delay the failure.

* :class:`RetryableError`: the world was briefly unavailable
  (:class:`TransientStorageError`).
* :class:`ConfigurationError`: the run is set up wrongly (:class:`SettingsError`,
  :class:`ModelError`, :class:`NamingError`) or the release must not be made
  (:class:`PublishRefused`).
* Neither: :class:`StorageError` (a missing object, access denied: permanent
  unless it is the :class:`TransientStorageError` subclass), :class:`UnsafeKeyError`,
  :class:`ManifestValidationError` (the data failed its quality gate) and
  :class:`ImageRejected`, which is not a run failure at all but one input's
  rejection, recorded in the manifest.

Built-in bases (``ValueError``, ``RuntimeError``) are kept where the classes had
them, so ``except ValueError`` in callers written before this hierarchy still
works. The classes are also re-exported by the modules that used to define them
(``airflow_privacy.core.settings.SettingsError`` ...).

Nothing here imports Airflow: the core and the CLI use these classes without it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AirflowPrivacyError",
    "ConfigurationError",
    "ImageRejected",
    "ManifestValidationError",
    "ModelError",
    "NamingError",
    "PublishRefused",
    "RetryableError",
    "SettingsError",
    "StorageError",
    "TransientStorageError",
    "UnsafeKeyError",
    "is_retryable",
]


class AirflowPrivacyError(Exception):
    """Base of every airflow-privacy error; not retryable unless a :class:`RetryableError`."""


class RetryableError(AirflowPrivacyError):
    """A failure that may not happen again: retrying the task later can succeed."""


class ConfigurationError(AirflowPrivacyError):
    """The run is configured in a way that cannot work; a retry gives the same failure."""


# --- storage -------------------------------------------------------------------------


class StorageError(AirflowPrivacyError, RuntimeError):
    """A storage operation failed for good (missing object, access denied, bad URI).

    Only the :class:`TransientStorageError` subclass is worth a retry.
    """


class TransientStorageError(StorageError, RetryableError):
    """The backend could not be reached or answered "try again" (endpoint down, timeout,
    throttling, 5xx). A separate class so that callers, and Airflow task retries, can
    tell "retry later" apart from "this will never work" (missing key, access denied)."""


class UnsafeKeyError(StorageError):
    """A key that would leave the storage root."""


# --- configuration -------------------------------------------------------------------


class SettingsError(ConfigurationError, ValueError):
    """A run was configured in a way that could not be honoured safely."""


class ModelError(ConfigurationError, RuntimeError):
    """Weights are missing, unreadable or not the pinned ones."""


class NamingError(ConfigurationError, ValueError):
    """A pseudonymization key (or name map location) that cannot be used: missing, empty,
    too short, or named ambiguously. Retrying cannot conjure a key."""


class PublishRefused(ConfigurationError, RuntimeError):
    """Nothing was released because the policy or the checks forbid it.

    A configuration error in the wide sense: the same manifest, validation and
    staging are refused again on every retry.
    """


# --- data ----------------------------------------------------------------------------


class ManifestValidationError(AirflowPrivacyError, RuntimeError):
    """The manifest failed its expectations; the message lists each failed one."""

    def __init__(self, failed: Sequence[str], path: str | None) -> None:
        self.failed = list(failed)
        self.path = path
        where = f"; full result in {path}" if path else ""
        lines = "\n".join(f"  - {line}" for line in self.failed)
        super().__init__(f"manifest failed {len(self.failed)} expectation(s){where}:\n{lines}")


class ImageRejected(AirflowPrivacyError, ValueError):
    """An input that is not processed, with a reason code for the manifest.

    Not a run failure: the stages catch it and record ``code`` and ``message``
    for that one input while the others go on.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the failed task may help.

    Our own errors say so by their class. An exception from elsewhere (a bug, a
    library error nobody translated) is reported retryable: the task's own retry
    policy then decides, exactly as Airflow would without this package's opinion.
    """
    if isinstance(exc, AirflowPrivacyError):
        return isinstance(exc, RetryableError)
    return True
