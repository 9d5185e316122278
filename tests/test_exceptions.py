"""The exception hierarchy: retry-or-fail decided by class, old import paths kept."""

from __future__ import annotations

import json

import pytest

from airflow_privacy import exceptions as exc
from airflow_privacy.core.status import Status


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("airflow_privacy.storage", "StorageError"),
        ("airflow_privacy.storage", "TransientStorageError"),
        ("airflow_privacy.storage", "UnsafeKeyError"),
        ("airflow_privacy.storage.base", "StorageError"),
        ("airflow_privacy.core.naming", "NamingError"),
        ("airflow_privacy.core.publish", "PublishRefused"),
        ("airflow_privacy.core.images", "ImageRejected"),
        ("airflow_privacy.core.settings", "SettingsError"),
        ("airflow_privacy.core.models", "ModelError"),
        ("airflow_privacy.core.expectations", "ManifestValidationError"),
    ],
)
def test_old_import_paths_give_the_same_class(module: str, name: str) -> None:
    import importlib

    assert getattr(importlib.import_module(module), name) is getattr(exc, name)


def test_built_in_bases_are_kept_for_existing_except_clauses() -> None:
    assert issubclass(exc.SettingsError, ValueError)
    assert issubclass(exc.NamingError, ValueError)
    assert issubclass(exc.ImageRejected, ValueError)
    assert issubclass(exc.ModelError, RuntimeError)
    assert issubclass(exc.StorageError, RuntimeError)
    assert issubclass(exc.PublishRefused, RuntimeError)
    assert issubclass(exc.ManifestValidationError, RuntimeError)
    assert issubclass(exc.TransientStorageError, exc.StorageError)
    assert issubclass(exc.UnsafeKeyError, exc.StorageError)


def test_only_retryable_errors_are_retryable() -> None:
    assert exc.is_retryable(exc.TransientStorageError("endpoint down"))
    for error in (
        exc.SettingsError("bad"), exc.ModelError("missing"), exc.NamingError("no key"),
        exc.PublishRefused("refused"), exc.StorageError("access denied"),
        exc.UnsafeKeyError("../x"), exc.ManifestValidationError(["x"], None),
        exc.ImageRejected("empty_file", "zero bytes"),
    ):
        assert not exc.is_retryable(error), error
    for config in (exc.SettingsError, exc.ModelError, exc.NamingError, exc.PublishRefused):
        assert issubclass(config, exc.ConfigurationError)
    assert not issubclass(exc.ImageRejected, (exc.RetryableError, exc.ConfigurationError))
    assert exc.is_retryable(OSError("not ours: left to the task's retry policy"))


def test_a_missing_or_short_pseudonymization_key_is_a_configuration_error() -> None:
    from airflow_privacy.core.naming import from_secret

    for secret in (None, "", "short"):
        with pytest.raises(exc.ConfigurationError):
            from_secret(secret, "Variable 'k'")


def test_operators_fail_fast_unless_retryable() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_privacy.operators.common import fail_fast_unless_retryable

    with pytest.raises(AirflowFailException, match="bad preset") as info:
        with fail_fast_unless_retryable():
            raise exc.SettingsError("bad preset")
    assert isinstance(info.value.__cause__, exc.SettingsError)
    with pytest.raises(exc.TransientStorageError):
        with fail_fast_unless_retryable():
            raise exc.TransientStorageError("endpoint down")
    with pytest.raises(KeyError):
        with fail_fast_unless_retryable():
            raise KeyError("a bug is not ours to classify")


def test_an_operator_key_lookup_that_finds_nothing_fails_without_retry(monkeypatch) -> None:
    from airflow_privacy.operators import naming

    monkeypatch.setattr(naming, "_variable", lambda key: "too short")
    with pytest.raises(exc.NamingError, match="at least"):
        naming.pseudonymizer(variable="pseudonym_key")
    with pytest.raises(exc.NamingError, match="not both"):
        naming.pseudonymizer("conn", "variable")


def test_status_is_its_string_in_json_and_comparisons() -> None:
    assert json.dumps({"status": Status.VERIFIED}) == '{"status": "verified"}'
    assert json.dumps({Status.ERROR: 1}) == '{"error": 1}'
    assert Status.QUARANTINED == "quarantined" and f"{Status.ERROR}" == "error"
    assert Status("verified") is Status.VERIFIED
