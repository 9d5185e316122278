"""The inputs of a run: which keys of the source are images, and reading one safely.

Shared by both drivers (the CLI's fused batch and the Airflow stages), so a
key is listed, refused or read the same way whichever runs it.

Nothing listed goes unaccounted for: a key that is not processed (not an image
name, a hidden file, a marker) is still an input with a manifest record, an
error whose code is :data:`UNSUPPORTED` (or :data:`HIDDEN`) and whose message
says what the content really is, so a release that lacks a file says which
file and why.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from airflow_privacy.core.flow import ImageState, fail, load
from airflow_privacy.core.images import (
    ImageRejected,
    describe_content,
    is_image_name,
    sha256_bytes,
)
from airflow_privacy.core.naming import Namer, refusals
from airflow_privacy.core.video.formats import is_video_name
from airflow_privacy.storage import Storage, StorageError, TransientStorageError, UnsafeKeyError

UNSUPPORTED = "unsupported_format"  # listed, not an image name: recorded, never processed
HIDDEN = "hidden_file"  # dot-files and ``_SUCCESS`` markers: recorded, never processed
SKIPPED = (UNSUPPORTED, HIDDEN)  # the same as core.status.SKIPPED


def list_inputs(source: Storage) -> tuple[list[str], list[str]]:
    """Image keys to process, and the other keys, which get skip records (:func:`skips`)."""
    images, skipped = [], []
    for key in source.list():
        (images if _processed(key) else skipped).append(key)
    return images, skipped


def skips(keys: list[str]) -> dict[str, tuple[str, str]]:
    """``{key: (code, message)}`` for listed keys that are recorded but not processed.

    The message is completed with what the content is when the key is read
    (:func:`read_input`), by whichever stage reads it first.
    """
    out = {}
    for key in keys:
        name = PurePosixPath(key).name
        if name.startswith(".") or name == "_SUCCESS":
            out[key] = (HIDDEN, f"{name!r} is a hidden file or a marker; not processed")
        else:
            suffix = PurePosixPath(key).suffix or "(no suffix)"
            out[key] = (UNSUPPORTED, f"files named *{suffix} are not processed")
    return out


def _processed(key: str) -> bool:
    name = PurePosixPath(key).name
    return not (name.startswith(".") or name == "_SUCCESS") and (
        is_image_name(key) or is_video_name(key))


def read_input(source: Storage, state: ImageState) -> None:
    """Load the input's bytes into ``state``; a key leaving the source root is an error record.

    A storage outage propagates (the task or run fails and is retried); a
    later stage's bytes must match the sha256 first recorded (:func:`load`).
    A skipped key is read once, for its sha256 and what its content is.
    """
    if state.failed:
        _describe_skipped(source, state)
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


def _describe_skipped(source: Storage, state: ImageState) -> None:
    """Hash an input refused before reading (skipped, or an output-name collision), and say
    what a skipped one is, so its record identifies the file when its bytes are not kept."""
    record, error = state.record, state.record["error"] or {}
    if error.get("code") == "unsafe_path" or record["input_sha256"] is not None:
        return
    try:
        data = source.read(record["source"])
    except TransientStorageError:
        raise
    except StorageError:
        return  # unreadable (a symlink leaving the root...): the record says it was skipped
    state.data = data
    record.update(input_sha256=sha256_bytes(data), input_bytes=len(data))
    if error.get("code") in SKIPPED:
        record["format"] = describe_content(data)
        error["message"] = f"{error['message']}; the content is {record['format']}"


def listing(source: Storage, namer: Namer | None = None) -> tuple[list[str], dict, int]:
    """Every listed key in order, the refusals decided before reading, and how many are skipped.

    Both drivers start here, so an input is refused (a name collision, under
    ``namer``'s pseudonyms too) or skipped (not an image, hidden) alike.
    """
    images, ignored = list_inputs(source)
    keys = sorted(images + ignored)  # every listed key is an input with a record
    return keys, refusals(images, namer) | skips(ignored), len(ignored)
