"""The inputs of a run: which keys of the source are images, and reading one safely.

Shared by both drivers (the CLI's fused batch and the Airflow stages), so a
key is listed, refused or read the same way whichever runs it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from airflow_privacy.core.flow import ImageState, fail, load
from airflow_privacy.core.images import ImageRejected, is_image_name
from airflow_privacy.storage import Storage, UnsafeKeyError


def list_inputs(source: Storage) -> tuple[list[str], list[str]]:
    """Image keys to process, and other keys that are ignored (by suffix)."""
    images, ignored = [], []
    for key in source.list():
        name = PurePosixPath(key).name
        if name.startswith(".") or name == "_SUCCESS":
            ignored.append(key)
        elif is_image_name(key):
            images.append(key)
        else:
            ignored.append(key)
    return images, ignored


def read_input(source: Storage, state: ImageState) -> None:
    """Load the input's bytes into ``state``; a key leaving the source root is an error record.

    A storage outage propagates (the task or run fails and is retried); a
    later stage's bytes must match the sha256 first recorded (:func:`load`).
    """
    if state.failed:
        return
    try:
        data = source.read(state.record["source"])
    except UnsafeKeyError as exc:
        fail(state, "unsafe_path", str(exc))
        return
    try:
        load(state, data)
    except ImageRejected as exc:
        fail(state, exc.code, exc.message)
