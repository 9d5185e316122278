"""airflow-privacy: anonymize people in image datasets inside Airflow pipelines.

The package is an Airflow provider (see :func:`get_provider_info`), but this
module imports nothing heavy: Airflow reads it on every provider discovery.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by ``airflow providers list`` through the entry point."""
    return {
        "package-name": "airflow-privacy",
        "name": "Privacy (image anonymization)",
        "description": "Detect, anonymize and verify people in image datasets with YOLO11.",
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "Image anonymization",
                "python-modules": [
                    "airflow_privacy.operators.shards",
                    "airflow_privacy.operators.detect",
                    "airflow_privacy.operators.anonymize",
                    "airflow_privacy.operators.verify",
                    "airflow_privacy.operators.publish",
                    "airflow_privacy.operators.validate",
                    "airflow_privacy.operators.cleanup",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Image anonymization",
                "python-modules": ["airflow_privacy.sensors.release"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Image anonymization",
                "python-modules": ["airflow_privacy.triggers.release"],
            }
        ],
        "task-groups": ["airflow_privacy.operators.task_group.anonymization_task_group"],
    }
