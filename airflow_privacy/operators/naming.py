"""The pseudonymization key in Airflow: a Connection's password or a Variable, never an argument.

An operator is given the *name* of where the key lives (``pseudonymize_conn_id``
or ``pseudonymize_variable``); the value is looked up in ``execute()`` through
Airflow's secrets backends (metadata DB, environment ``AIRFLOW_CONN_*`` /
``AIRFLOW_VAR_*``, Vault, ...), so it never appears in the DAG file, the
rendered template fields, the task log or an XCom. Use a Connection (its
password is masked in the UI and in logs) or a Variable whose name contains
``secret``/``key``/``password`` (Airflow masks those too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.exceptions import NamingError

if TYPE_CHECKING:
    from airflow_privacy.core.naming import Pseudonymizer


def pseudonymizer(
    conn_id: str | None = None, variable: str | None = None
) -> Pseudonymizer | None:
    """The :class:`~airflow_privacy.core.naming.Pseudonymizer` whose key is the password of
    connection ``conn_id`` or the value of Variable ``variable``; ``None`` when neither is
    given (outputs keep their names).

    Every way of not getting a usable key (both places named, a connection that
    does not exist, an empty or too short secret) raises
    :class:`~airflow_privacy.exceptions.NamingError`, a configuration error: the
    task fails without retries, since retrying cannot make a key appear.
    """
    from airflow_privacy.core.naming import from_secret

    if conn_id and variable:
        raise NamingError("give pseudonymize_conn_id or pseudonymize_variable, not both")
    if conn_id:
        secret, where = _connection_password(conn_id), f"connection {conn_id!r}"
    elif variable:
        secret, where = _variable(variable), f"Variable {variable!r}"
    else:
        return None
    return from_secret(secret, where)


def _connection_password(conn_id: str) -> str | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id).password
    except AirflowNotFoundException as exc:
        raise NamingError(f"connection {conn_id!r} (the pseudonymization key) is not defined") \
            from exc


def _variable(key: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(key, default=None)
