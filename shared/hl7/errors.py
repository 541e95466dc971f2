"""Typed outcomes of an ORU delivery, each marked transient (retry) or permanent (give up now).

Transient: the RIS was unreachable or slow, or answered AE/CE (it could not process the message
*now*: database down, lock timeout …), or its answer was garbled or acknowledged another
message — in all of these our message may simply not have arrived intact, and re-sending is safe
because the receiver de-duplicates on MSH-10.
Permanent: AR/CR (the RIS rejects this message: wrong type, version, processing ID …) or a
message we cannot build/validate — the same bytes would be rejected again.
"""

from __future__ import annotations

from shared.delivery_policy import DeliveryError


class RisUnreachable(DeliveryError):
    """Connection refused, reset, name not resolved, or the connect timed out."""

    transient = True


class RisTimeout(DeliveryError):
    """Connected and sent, but no complete ACK frame within the read timeout."""

    transient = True


class GarbledAck(DeliveryError):
    """The peer answered something that is not an MLLP-framed, UTF-8, HL7 ACK (or hung up)."""

    transient = True


class AckControlIdMismatch(DeliveryError):
    """A well-formed ACK whose MSA-2 names another message: ours is not acknowledged."""

    transient = True


class AckError(DeliveryError):
    """MSA-1 AE (or CE): the RIS could not process the message now."""

    transient = True


class AckRejected(DeliveryError):
    """MSA-1 AR (or CR): the RIS refuses this message; re-sending cannot help."""

    transient = False


class InvalidOru(DeliveryError):
    """We could not build a valid ORU from the report (missing data, failed validation)."""

    transient = False
