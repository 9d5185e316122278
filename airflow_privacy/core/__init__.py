"""The plain-Python core: detect -> anonymize -> verify -> publish.

Nothing under this package imports Airflow; the operators in
``airflow_privacy.operators`` and the CLI in ``airflow_privacy.cli`` are thin
faces over these modules.
"""
