"""Sensors for downstream DAGs that consume airflow-privacy releases."""

from airflow_privacy.sensors.release import VerifiedReleaseSensor

__all__ = ["VerifiedReleaseSensor"]
