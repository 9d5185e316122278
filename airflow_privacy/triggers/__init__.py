"""Triggers (run by the Airflow triggerer) for deferrable airflow-privacy sensors."""

from airflow_privacy.triggers.release import VerifiedReleaseTrigger

__all__ = ["VerifiedReleaseTrigger"]
