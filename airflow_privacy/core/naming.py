"""Output names: the input's own relative path, or a keyed pseudonym of it.

File and folder names often say who is in a picture (``anna-smith/birthday.jpg``),
so anonymizing the pixels is not always enough. With a :class:`Pseudonymizer`
an output is published as ``<32 hex>.<suffix>``: the first 128 bits of
HMAC-SHA256 of the input's relative path under a secret key, plus the output's
suffix. The release is flat (no folders, which could carry names too) and holds
nothing that reveals an original name; without the key the pseudonyms cannot
be recomputed from guessed names (a plain hash of ``IMG_0001.jpg`` could).

The link back from pseudonym to input exists in two places only, both chosen
by the user: the manifest (``source`` and ``output_key``, in the report
location, which is the user's private audit record) and, when asked for, a
name map written to an explicit location (:func:`write_name_map`). The key is
never written anywhere: the map and the summary carry its ``key_id``, an HMAC
of a constant that tells keys apart without revealing them.

Where the key comes from is the caller's business: the CLI reads it from an
environment variable named on the command line (never the value itself, which
would land in the shell history and the process list); the Airflow operators
from a Connection's password or a Variable.

Two inputs must never share an output name, or one output would overwrite the
other's. Pseudonyms of distinct paths differ (barring a 128-bit collision), but
plain names can clash: ``x.gif`` is published as ``x.png`` because GIF cannot
be written. :func:`find_collisions` finds such inputs so that they are rejected
instead of silently replacing another image.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from airflow_privacy.core.images import output_suffix
from airflow_privacy.exceptions import NamingError

MIN_KEY_BYTES = 16  # shorter keys could be brute-forced from guessable file names
PSEUDONYM_HEX = 32  # 128 bits
SCHEME = "hmac-sha256-128"
NAME_MAP_VERSION = 1
COLLISION = "output_name_collision"

Namer = Callable[[str], str]


class Pseudonymizer:
    """``key -> <hmac hex>.<suffix>``; the secret never appears in its repr, str or pickle."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | str) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_KEY_BYTES:
            raise NamingError(
                f"a pseudonymization key needs at least {MIN_KEY_BYTES} bytes, "
                f"this one has {len(raw)}"
            )
        self._secret = raw

    def __call__(self, key: str) -> str:
        digest = hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX] + output_suffix(key)

    @property
    def key_id(self) -> str:
        """Identifies the key (16 hex) without revealing it: HMAC of a fixed label."""
        return hmac.new(self._secret, b"airflow-privacy key id", hashlib.sha256).hexdigest()[:16]

    def describe(self) -> dict[str, str]:
        """What a summary or name map may say about the naming: never the key."""
        return {"scheme": SCHEME, "key_id": self.key_id}

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self.key_id!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a Pseudonymizer holds a secret and is not pickled")


def from_secret(secret: str | None, where: str) -> Pseudonymizer:
    """The pseudonymizer keyed by ``secret``; errors name ``where`` it came from, never it."""
    if not secret:
        raise NamingError(f"{where} holds no pseudonymization key")
    try:
        return Pseudonymizer(secret)
    except NamingError as exc:
        raise NamingError(f"{where}: {exc}") from None


def from_env(variable: str, environ: Mapping[str, str] | None = None) -> Pseudonymizer:
    """The pseudonymizer whose key is in the environment variable ``variable``."""
    environ = os.environ if environ is None else environ
    return from_secret(environ.get(variable), f"environment variable {variable}")


def find_collisions(keys: Iterable[str], name_of: Namer) -> dict[str, str]:
    """Inputs whose output name another input also gets: ``{key: shared name}``.

    Of the inputs sharing a name, one whose name is its own (``x.png`` for
    ``x.png``) keeps it; every other one collides, so no output is ever
    published under another input's name.
    """
    by_name: dict[str, list[str]] = {}
    for key in keys:
        by_name.setdefault(name_of(key), []).append(key)
    return {
        key: name
        for name, group in by_name.items()
        if len(group) > 1
        for key in group
        if key != name
    }


def collision_message(key: str, name: str) -> str:
    return (
        f"{key!r} would be published as {name!r}, the output name of another input; "
        "rename one of them (or publish under pseudonyms)"
    )


def name_map(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{source: output_key}`` of every input, published or not."""
    return {r["source"]: r["output_key"] for r in records if r.get("output_key")}


def name_map_document(records: Sequence[dict[str, Any]], namer: Pseudonymizer) -> bytes:
    document = {"version": NAME_MAP_VERSION, **namer.describe(), "names": name_map(records)}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_name_map(location: str, records: Sequence[dict[str, Any]], namer: Pseudonymizer,
                   *, filesystem: Any = None) -> str:
    """Write the name map to ``location`` (a file path or ``s3://bucket/key``); its URI.

    ``filesystem``: the fsspec filesystem for an object-store location (see
    :func:`~airflow_privacy.storage.open_storage`); without one its scheme's default.

    The map is what links published pseudonyms to the original names, so it is
    written only where the user asked, atomically like every other object.
    """
    from pathlib import Path

    from airflow_privacy.storage import open_storage, scheme_of

    if scheme_of(location) not in (None, "file"):
        parent, _, name = location.rpartition("/")
        if not name or parent.count("/") < 2:
            raise NamingError(f"name map location {location!r} does not name an object")
    else:
        path = Path(location).expanduser().absolute()
        parent, name = str(path.parent), path.name
        if location.endswith("/") or not name:
            raise NamingError(f"name map location {location!r} does not name a file")
    storage = open_storage(parent, filesystem=filesystem)
    storage.write(name, name_map_document(records, namer))
    return storage.uri_of(name)


def output_key(key: str, namer: Namer | None = None) -> str:
    """Same relative path and name as the input, unless we cannot write its format (GIF);
    with ``namer``, its pseudonym instead."""
    if namer is not None:
        return namer(key)
    path = PurePosixPath(key)
    suffix = output_suffix(key)
    if path.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff") or suffix == path.suffix.lower():
        return key
    return str(path.with_suffix(suffix))


def refusals(keys: Iterable[str], namer: Namer | None = None) -> dict[str, tuple[str, str]]:
    """``{key: (code, message)}`` for inputs refused before they are read: name collisions.

    Both drivers call this over the whole listing, so an input is refused alike
    by the CLI and by the Airflow stages.
    """
    keys = list(keys)
    clashes = find_collisions(keys, lambda key: output_key(key, namer))
    return {key: (COLLISION, collision_message(key, name)) for key, name in clashes.items()}
