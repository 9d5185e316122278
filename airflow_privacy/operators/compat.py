"""Every Airflow import the operators need, in one place.

The project targets Airflow 3 (``airflow.sdk``); the fallbacks keep the module
importable on Airflow 2 so that a difference is absorbed here, not in each
operator.
"""

from __future__ import annotations

try:
    from airflow.sdk import Asset, AssetAlias, BaseOperator, TaskGroup
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 2
    from airflow.datasets import Dataset as Asset  # type: ignore[no-redef]
    from airflow.datasets import DatasetAlias as AssetAlias  # type: ignore[no-redef]
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowFailException,
        AirflowSkipException,
    )
    from airflow.models import BaseOperator  # type: ignore[no-redef]
    from airflow.utils.task_group import TaskGroup  # type: ignore[no-redef]

__all__ = ["AirflowFailException", "AirflowSkipException", "Asset", "AssetAlias", "BaseOperator",
           "TaskGroup"]
