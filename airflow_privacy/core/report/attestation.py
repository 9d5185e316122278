"""``attestation.json``: what a run produced, in a form a data-protection officer can sign.

The attestation binds together, by sha256, the manifest (one record per
input), the report page, the release (``release_sha256`` from ``_SUCCESS``:
every published key and its bytes), the settings, the model pins, the package
version and the run's identity, plus the quality gate's verdict and the
plain-language counts.

**What the signature proves.** With a key from an Airflow connection
(``attestation_conn_id``) or the CLI's ``--attestation-key-env``, the
attestation carries ``HMAC-SHA256(key, canonical JSON of "claims")``. Anyone
holding the key can check (:func:`verify_attestation`) that these claims were
written by a holder of the key and not changed since, and then check the
manifest, report and release files against the hashes. It does *not* prove
that no person is visible in the release beyond what the recorded checks
found, and HMAC is symmetric: whoever can verify could also have signed, so
keep the key with the signer. Without a key the attestation is unsigned and
only the hashes are evidence.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

ALGORITHM = "HMAC-SHA256"
STATEMENT = (
    "This run processed every listed input into the manifest with sha256 manifest_sha256 "
    "(one record per input); published only the outputs listed in the release with sha256 "
    "release_sha256, each verified by re-detection and an independent face check; and wrote "
    "the report with sha256 report_sha256. The signature (HMAC-SHA256 over the canonical JSON "
    "of 'claims') shows these claims come from a holder of the key and are unchanged; it does "
    "not prove more than the recorded checks found."
)


def canonical(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def attestation(claims: dict[str, Any], key: bytes | None = None,
                key_id: str | None = None) -> dict[str, Any]:
    """The attestation document: claims, the statement, and a signature when ``key`` is given."""
    signature = None
    if key:
        signature = {"algorithm": ALGORITHM, "key_id": key_id,
                     "value": hmac.new(key, canonical(claims), hashlib.sha256).hexdigest()}
    return {"statement": STATEMENT, "claims": claims, "signature": signature}


def verify_attestation(document: dict[str, Any], key: bytes) -> bool:
    """Whether ``document``'s signature is valid for its claims under ``key``."""
    signature = document.get("signature") or {}
    if signature.get("algorithm") != ALGORITHM or not isinstance(signature.get("value"), str):
        return False
    expected = hmac.new(key, canonical(document.get("claims") or {}), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature["value"])
