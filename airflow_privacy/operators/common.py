"""What every operator shares: opening locations through a connection, lineage, the shard base.

Locations are URIs: a local path, or object storage served by Airflow's
``ObjectStoragePath`` (``s3://``, ``gs://``, ``abfs://`` ... through common-io and
fsspec). For ``s3://`` the connection is the operators' ``aws_conn_id`` (credentials
and ``endpoint_url`` live there); any location may name its own connection as
``scheme://conn_id@bucket/prefix``. Nothing secret is an argument, and nothing
secret reaches a log or an XCom.

When the OpenLineage provider is installed, every operator reports its input
and output locations as OpenLineage datasets (:class:`LineageMixin`); without
it the hook returns ``None`` and nothing is imported.

Whether a failure is worth a retry is decided by the exception hierarchy in
:mod:`airflow_privacy.exceptions`, in one place (:func:`fail_fast_unless_retryable`),
not by a list of classes kept in each operator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.exceptions import AirflowPrivacyError, is_retryable

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


AWS_CONN_ID = "aws_default"  # the Amazon provider's default, for every operator and the group


def run_identity(context: Any) -> dict[str, Any]:
    """The run's identity for the report, from the task context, as plain data for core."""
    from datetime import UTC, datetime

    from airflow_privacy.core.report import run_identity as identity

    run, ti = context.get("dag_run"), context.get("ti")
    run_type = getattr(run, "run_type", None)
    user = getattr(run, "triggering_user_name", None)
    trigger = getattr(run_type, "value", run_type)
    return identity(
        driver="airflow", dag_id=getattr(run, "dag_id", None), run_id=getattr(run, "run_id", None),
        logical_date=getattr(run, "logical_date", None), started=getattr(run, "start_date", None),
        ended=datetime.now(UTC), run_type=run_type,
        triggered_by=f"{trigger} run by {user}" if user else trigger,
        task_id=getattr(ti, "task_id", None), try_number=getattr(ti, "try_number", None),
    )


def attestation_key(conn_id: str | None) -> bytes | None:
    """The attestation's HMAC key: the password of connection ``conn_id`` (None: unsigned).

    A missing connection or a key under 16 bytes is a configuration error (no retry).
    """
    if not conn_id:
        return None
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_privacy.exceptions import SettingsError

    try:
        secret = Connection.get(conn_id).password or ""
    except AirflowNotFoundException as exc:
        raise SettingsError(f"connection {conn_id!r} (the attestation key) is not defined") \
            from exc
    if len(secret.encode("utf-8")) < 16:
        raise SettingsError(f"connection {conn_id!r}: the attestation key needs >= 16 bytes")
    return secret.encode("utf-8")


def open_locations(aws_conn_id: str | None, *uris: str) -> list[Storage]:
    """Storages for ``uris``: local paths as folders, anything else through Airflow's
    ``ObjectStoragePath`` and a connection (one filesystem per scheme and connection,
    shared, so copies between two ``s3://`` locations stay server-side)."""
    from airflow_privacy.storage import open_storage

    stores = []
    for uri in uris:
        location, filesystem = object_storage(uri, aws_conn_id)
        stores.append(open_storage(location, filesystem=filesystem))
    return stores


#: Schemes served by the Amazon provider: their connection is the operators' ``aws_conn_id``.
AWS_SCHEMES = frozenset({"s3", "s3a", "s3n"})

#: The Airflow provider that registers each common scheme with ``ObjectStoragePath``.
PROVIDERS = {
    "s3": "apache-airflow-providers-amazon[s3fs]",
    "s3a": "apache-airflow-providers-amazon[s3fs]",
    "s3n": "apache-airflow-providers-amazon[s3fs]",
    "gs": "apache-airflow-providers-google",
    "gcs": "apache-airflow-providers-google",
    "abfs": "apache-airflow-providers-microsoft-azure",
    "abfss": "apache-airflow-providers-microsoft-azure",
    "az": "apache-airflow-providers-microsoft-azure",
    "adl": "apache-airflow-providers-microsoft-azure",
}


def object_storage(uri: str, aws_conn_id: str | None) -> tuple[str, Any]:
    """``(location, filesystem)`` for ``uri``: the fsspec filesystem Airflow serves it with.

    A local path or ``file://`` needs none (``(uri, None)``). Otherwise the connection is
    the URI's user part (``gs://my_gcp@bucket/prefix``, as ``ObjectStoragePath`` reads
    it), else ``aws_conn_id`` for ``s3://`` (so the S3 DAGs keep their ``aws_conn_id``),
    else the provider's default connection. The location returned is the URI without
    the connection id: that is what manifests and messages name.

    A scheme no installed provider registers, or a connection that is not defined, is
    a :class:`~airflow_privacy.exceptions.SettingsError` naming the scheme, the
    connection and the provider to install: a retry cannot fix either.
    """
    from urllib.parse import urlsplit, urlunsplit

    from airflow_privacy.exceptions import SettingsError
    from airflow_privacy.storage import scheme_of

    scheme = scheme_of(uri)
    if scheme in (None, "file"):
        return uri, None
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        # user:password@ -- never echo the URI: it holds a secret
        raise SettingsError(f"a {scheme}:// location holds credentials in its URI; "
                            "put them in an Airflow connection and name its id instead")
    conn_id = userinfo or (aws_conn_id if scheme in AWS_SCHEMES else None)
    location = urlunsplit(parts._replace(netloc=host))
    provider = PROVIDERS.get(scheme, "the Airflow provider that registers it")
    connection = f"connection {conn_id!r}" if conn_id else "the provider's default connection"

    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        filesystem = ObjectStoragePath(location, conn_id=conn_id).fs
    except AirflowNotFoundException as exc:
        raise SettingsError(
            f"{location}: {connection} is not defined; define it (conn_type for "
            f"{scheme}://, from {provider}) or name another as {scheme}://CONN_ID@...") from exc
    except (ValueError, ImportError, NotImplementedError) as exc:
        raise SettingsError(
            f"{location}: no filesystem is registered for scheme {scheme!r} ({connection}); "
            f"install {provider} and define the connection; "
            f"Airflow said: {type(exc).__name__}: {exc}") from exc
    return location, filesystem


@contextmanager
def fail_fast_unless_retryable() -> Iterator[None]:
    """Fail the task without retries on an error that a retry cannot fix.

    A :class:`~airflow_privacy.exceptions.RetryableError` (a storage outage)
    propagates and Airflow retries the task; any other ``AirflowPrivacyError``
    (settings, model, pseudonymization key, refused publish, failed validation,
    a missing object) becomes ``AirflowFailException``, so the task fails at once
    instead of repeating the same failure ``retries`` times. Exceptions from
    elsewhere are left alone, to the task's retry policy.
    """
    try:
        yield
    except AirflowPrivacyError as exc:
        if is_retryable(exc):
            raise
        raise AirflowFailException(str(exc)) from exc


def lineage_dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage naming: ``s3://bucket/a/b`` -> (``s3://bucket``, ``a/b``); a path -> file."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        return f"s3://{bucket.rpartition('@')[2]}", prefix.strip("/") or "/"
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        host, _, path = rest.partition("/")
        host = host.rpartition("@")[2]  # a connection id (gs://conn@bucket) names no dataset
        return f"{scheme}://{host}", path or "/"
    from pathlib import Path

    return "file", str(Path(uri).expanduser().absolute())


def openlineage_datasets(inputs: Sequence[str | None], outputs: Sequence[str | None]) -> Any:
    """An ``OperatorLineage`` for these URIs, or ``None`` without the OpenLineage provider."""
    try:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None

    def datasets(uris: Sequence[str | None]) -> list[Any]:
        return [Dataset(*lineage_dataset_name(uri)) for uri in uris if uri]

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))


class LineageMixin:
    """OpenLineage input/output datasets from the operator's (rendered) location fields."""

    lineage_inputs: Sequence[str] = ()
    lineage_outputs: Sequence[str] = ()

    def _lineage(self) -> Any:
        return openlineage_datasets(
            [getattr(self, name, None) for name in self.lineage_inputs],
            [getattr(self, name, None) for name in self.lineage_outputs],
        )

    def get_openlineage_facets_on_start(self) -> Any:
        return self._lineage()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self._lineage()


class ShardOperator(LineageMixin, BaseOperator):
    """Runs one stage on one shard; meant to be mapped: ``.partial(...).expand(shard=...)``.

    :param source: folder or ``s3://`` prefix of the input images (templated)
    :param work: the run's work location shared by the stages (templated)
    :param shard: one element of :class:`ListImageShardsOperator`'s output
    :param settings: ``RunSettings.to_dict()`` (or part of it); templated
    :param aws_conn_id: connection for ``s3://`` locations (default ``aws_default``, as in the
        Amazon provider); ``None``: boto3's default chain. Other schemes name theirs in the
        URI (``gs://conn_id@bucket/prefix``) or use their provider's default
    """

    template_fields: Sequence[str] = ("source", "work", "settings", "aws_conn_id")
    ui_color = "#e8d5f5"
    lineage_inputs = ("source",)
    lineage_outputs = ("work",)

    def __init__(
        self,
        *,
        source: str,
        work: str,
        shard: dict[str, Any],
        settings: dict[str, Any] | None = None,
        aws_conn_id: str | None = AWS_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.work = work
        self.shard = shard
        self.settings = settings
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.stages import build_pipeline

        with fail_fast_unless_retryable():
            source, work = open_locations(self.aws_conn_id, self.source, self.work)
            result = self.run_stage(build_pipeline(self.settings), source, work, self.shard)
        self.log.info("shard %s: %s", self.shard["shard_id"], result)
        if result.get("skipped"):
            self.log.info("shard %s: %d of %d inputs were already done and skipped",
                          self.shard["shard_id"], result["skipped"], result["images"])
        return result

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        raise NotImplementedError
