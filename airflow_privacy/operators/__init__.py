"""Thin Airflow operators over :mod:`airflow_privacy.core.stages`.

Each operator stores its keyword-only arguments, templates every location,
opens storage (an S3 client from ``aws_conn_id`` where needed) in
``execute()``, calls one core function and returns a small XCom. Heavy
imports (torch, ultralytics, Great Expectations) happen in ``execute()`` only,
so DAG parsing stays fast.
"""
