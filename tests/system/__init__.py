"""System tests: a real Airflow cluster (``pytest -m system tests/system``)."""
