"""What became of one input: the ``status`` of its manifest record.

A :class:`~enum.StrEnum`, so a member *is* its string: it compares equal to
``"verified"``, serializes as ``"verified"`` in JSON and manifests written
before the enum existed read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """The outcome of one input, as the manifest records it."""

    VERIFIED = "verified"
    """Anonymized, and verification found no person or face left: may be published."""

    QUARANTINED = "quarantined"
    """Processed, but verification still found someone (after remediation): the output
    is kept aside for review under ``quarantine/`` and is never published."""

    ERROR = "error"
    """Not processed at all: the input was rejected (undecodable, too large, unsafe
    name, name collision ...) and the record carries an error code and message."""


#: Error codes of listed files that are recorded but never processed (not images, hidden
#: files, markers): accounted for in the manifest, yet no failure of the anonymization, so
#: they neither withhold an ``all_or_nothing`` release nor count toward the error rate.
SKIPPED = ("unsupported_format", "hidden_file")
