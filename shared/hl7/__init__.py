"""HL7 v2.5.1 to the RIS: ORU^R01 building (oru.py), reading (oru_read.py), MLLP client
(mllp.py), ACKs (ack.py), typed delivery errors (errors.py). Retry timing lives in
shared/delivery_policy.py, shared with the SR delivery.

Typical use in a delivery task:

    data = OruInput.from_db(study, report, sr_sop_instance_uid=sr_uid, signer=signer)
    # MSH-10 must be the delivery row's message_id (the same derivation: ORU<report>V<version>)
    ack = send_oru(build_oru(data, delivery.message_id, languages=("en", "zh")))
    # DeliveryError (transient or not) otherwise; see shared.delivery_policy.after_failure
"""

from shared.hl7.ack import Ack, parse_ack
from shared.hl7.control_id import message_control_id
from shared.hl7.errors import (
    AckControlIdMismatch,
    AckError,
    AckRejected,
    GarbledAck,
    InvalidOru,
    RisTimeout,
    RisUnreachable,
)
from shared.hl7.mllp import send_message, send_oru
from shared.hl7.oru import Interpreter, OruInput, ReportLine, build_oru, result_status_for
from shared.hl7.oru_read import ReceivedOru, read_oru

__all__ = [
    "Ack",
    "AckControlIdMismatch",
    "AckError",
    "AckRejected",
    "GarbledAck",
    "InvalidOru",
    "Interpreter",
    "OruInput",
    "ReceivedOru",
    "ReportLine",
    "RisTimeout",
    "RisUnreachable",
    "build_oru",
    "message_control_id",
    "parse_ack",
    "read_oru",
    "result_status_for",
    "send_message",
    "send_oru",
]
