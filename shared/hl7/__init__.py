"""HL7 v2.5.1 to the RIS: ORU^R01 building (oru.py), reading (oru_read.py), MLLP client
(mllp.py), ACKs (ack.py), typed delivery errors (errors.py). Retry timing lives in
shared/delivery_policy.py, shared with the SR delivery.

Typical use in a delivery task:

    data = OruInput.from_report(version, sr_sop_instance_uid=sr_uid)  # a shared.reports domain object
    # MSH-10 is the delivery row's message_id (shared.reports.message_ids: ORU<report>V<version>)
    ack = send_oru(build_oru(data, delivery.message_id, languages=("en", "zh")))
    # DeliveryError (transient or not) otherwise; see shared.delivery_policy.after_failure
"""

from shared.hl7.ack import Ack, parse_ack
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
    "parse_ack",
    "read_oru",
    "result_status_for",
    "send_message",
    "send_oru",
]
