"""The C heap settings that keep a long batch's memory flat (core/heap.py)."""

from __future__ import annotations

import sys

import pytest

from airflow_privacy.core import heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_fixed_mmap_threshold_and_two_arenas(monkeypatch):
    for _, _, variable in heap.SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    assert heap.bound_heap() == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"]


def test_an_operators_own_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.bound_heap() == []
