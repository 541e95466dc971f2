"""The chaos benchmark's counts on hand-made receiver logs and rows: each rule fires when it
should and stays quiet on what is allowed by design (re-sends of the same message)."""

from __future__ import annotations

from ops.bench import chaos_counts as c


def _delivery(id_: int, study: int, version: int, status: str, kind: str = "hl7",
              state: str = "delivered") -> c.DbDelivery:  # fmt: skip
    message_id = f"ORU{100 + version}V{version}" if kind == "hl7" else f"1.2.3.{version}"
    return c.DbDelivery(id_, 100 + version, study, version, status, kind, message_id, state)


SINK_LOG = """\
2026-11-30 12:00:01 ris_sink INFO received #0 control_id=ORU101V1 type=ORU^R01 obr25=P obx=3 bytes=10 reply=AA
2026-11-30 12:00:02 ris_sink INFO received #1 control_id=ORU102V2 type=ORU^R01 obr25=F obx=3 bytes=10 reply=AE
2026-11-30 12:00:03 ris_sink INFO sender went away before the ACK
2026-11-30 12:00:04 ris_sink INFO received #0 control_id=ORU102V2 type=ORU^R01 obr25=F obx=3 bytes=10 reply=AA
2026-11-30 12:00:05 ris_sink INFO received #1 control_id=ORU102V2 type=ORU^R01 obr25=F obx=3 bytes=10 reply=AA
"""


def test_sink_log_is_read_in_order_and_resends_counted_apart() -> None:
    records = c.parse_sink_log(SINK_LOG)
    assert [(r.control_id, r.reply) for r in records] == [
        ("ORU101V1", "AA"), ("ORU102V2", "AE"), ("ORU102V2", "AA"), ("ORU102V2", "AA"),
    ]  # fmt: skip
    assert c.ris_resends(records) == 1  # the AE copy was not taken; the second AA is a re-send
    by_id = {d.message_id: d for d in (_delivery(1, 7, 1, "P"), _delivery(2, 7, 2, "F"))}
    assert c.order_violations(c.ris_messages(records, by_id)) == []


def test_order_rules() -> None:
    def msg(version: int, status: str, study: int = 7) -> c.Message:
        return c.Message("ris", f"ORU{version}V{version}", study, version, status)

    assert c.order_violations([msg(1, "P"), msg(2, "F"), msg(1, "P")]) == []  # re-send: no event
    assert len(c.order_violations([msg(2, "F"), msg(3, "P")])) == 1  # P after F
    assert len(c.order_violations([msg(1, "P"), msg(3, "C")])) == 1  # C before any F
    assert len(c.order_violations([msg(3, "P"), msg(2, "P")])) == 1  # version going down
    assert c.order_violations([msg(2, "F"), msg(1, "P", study=8)]) == []  # another study
    assert c.order_violations([msg(1, "P"), msg(2, "F"), msg(4, "C")]) == []


def test_hl7_digest_ignores_only_the_send_time() -> None:
    one = b"MSH|^~\\&|MEDREGA_PACS|H|RIS|H|20261130120000||ORU^R01^ORU_R01|ORU1V1|P|2.5.1\rOBR|1||||||||||||||||||||||||P"
    resent = one.replace(b"20261130120000", b"20261130121500")
    changed = one.replace(b"|P", b"|F")
    assert c.hl7_content_digest(one) == c.hl7_content_digest(resent)
    assert c.hl7_content_digest(one) != c.hl7_content_digest(changed)


def test_duplicates_at_the_receivers() -> None:
    sr_final = _delivery(1, 7, 2, "F", kind="sr")
    by_uid = {sr_final.message_id: sr_final}
    stored = c.PacsSr(5, "o1", sr_final.message_id, "1.9", "VERIFIED", "COMPLETE")
    assert c.duplicate_deliveries({"ORU1V1": {"a"}}, [stored], by_uid, {7: "1.9"}) == []
    assert len(c.duplicate_deliveries({"ORU1V1": {"a", "b"}}, [stored], by_uid, {7: "1.9"})) == 1
    twice = c.PacsSr(9, "o2", sr_final.message_id, "1.8", "VERIFIED", "COMPLETE")
    assert len(c.duplicate_deliveries({}, [stored, twice], by_uid, {7: "1.9"})) >= 1
    draft_content = c.PacsSr(5, "o1", sr_final.message_id, "1.9", "UNVERIFIED", "PARTIAL")
    assert len(c.duplicate_deliveries({}, [draft_content], by_uid, {7: "1.9"})) == 1


def test_lost_and_covered() -> None:
    study = c.DbStudy(7, "1.9", "drafted", False, {"a", "b"})
    draft = c.DbReport(101, 7, 1, "draft", True, 2)
    delivered = [_delivery(1, 7, 1, "P"), _delivery(2, 7, 1, "P", kind="sr")]
    ris, pacs = {"ORU101V1"}, {"1.2.3.1"}
    assert c.lost_reasons({"a", "b"}, study, [draft], delivered, ris, pacs) == []
    assert c.lost_reasons({"a", "b", "x"}, study, [draft], delivered, ris, pacs)  # x not in DB
    assert c.lost_reasons({"a", "b"}, study, [draft], delivered, set(), pacs)  # not at the RIS
    pending = [delivered[0], _delivery(2, 7, 1, "P", kind="sr", state="pending")]
    assert c.lost_reasons({"a", "b"}, study, [draft], pending, ris, pacs)
    assert c.lost_reasons({"a", "b"}, None, [], [], ris, pacs) == ["study not in the database"]
    partial = c.DbReport(101, 7, 1, "draft", True, 1)  # the draft saw one of the two images
    assert c.lost_reasons({"a", "b"}, study, [partial], delivered, ris, pacs)
    signed = c.DbReport(102, 7, 2, "signed", False, 1, signed_at=100.0)
    final = [_delivery(3, 7, 2, "F"), _delivery(4, 7, 2, "F", kind="sr")]
    ris_pacs = ({"ORU101V1", "ORU102V2"}, {"1.2.3.1", "1.2.3.2"})
    both = delivered + final
    # b arrived before the signature: the radiologist signed with it in the viewer.
    seen = c.DbStudy(7, "1.9", "signed", False, {"a", "b"}, {"a": 10.0, "b": 90.0})
    assert c.lost_reasons({"a", "b"}, seen, [partial, signed], both, *ris_pacs) == []
    # b arrived after it: the study must be flagged "new images after sign-off".
    late = {"a": 10.0, "b": 110.0}
    flagged = c.DbStudy(7, "1.9", "signed", True, {"a", "b"}, late)
    assert c.lost_reasons({"a", "b"}, flagged, [partial, signed], both, *ris_pacs) == []
    unflagged = c.DbStudy(7, "1.9", "signed", False, {"a", "b"}, late)
    assert c.lost_reasons({"a", "b"}, unflagged, [partial, signed], both, *ris_pacs)
    # Signed on a draft that saw only a, while b was already in: reported apart.
    assert c.signed_uncovered({"a", "b"}, seen, [partial, signed])
    assert not c.signed_uncovered({"a", "b"}, unflagged, [partial, signed])  # b came later
    covering = c.DbReport(102, 7, 2, "signed", False, 2, signed_at=100.0)
    assert not c.signed_uncovered({"a", "b"}, seen, [partial, covering])
    refused = c.DbStudy(8, "1.8", "not_applicable", False, {"a"})
    assert c.refused_by_model({"a"}, refused, []) and not c.refused_by_model(
        {"a", "b"}, refused, []
    )


def test_signed_overwritten_and_stuck() -> None:
    study = c.DbStudy(7, "1.9", "signed", False)
    history = [c.DbReport(1, 7, 1, "superseded", True, 1), c.DbReport(2, 7, 2, "signed", False, 1)]
    assert c.signed_overwritten(study, history, "signed", False) == []
    redrafted = history + [c.DbReport(3, 7, 3, "draft", True, 2)]
    assert c.signed_overwritten(study, redrafted, "signed", False)
    assert c.signed_overwritten(study, history, "draft_ready", False)
    assert c.signed_overwritten(study, history, "signed", True)
    assert c.signed_overwritten(c.DbStudy(7, "1.9", "drafted", False), history, None, False)
    assert c.signed_overwritten(study, history[:1], "draft_ready", True) == []  # never signed
    rows = [_delivery(1, 7, 1, "P", state="in_flight"), _delivery(2, 7, 1, "P", state="cancelled")]
    assert c.stuck(["done", "running"], rows, ["signed", "stable"]) == {
        "draft_jobs": 1, "deliveries": 1, "studies": 1,
    }  # fmt: skip
    cancelled = [_delivery(2, 7, 1, "P", state="cancelled")]
    assert c.cancelled_but_received(cancelled, {"ORU101V1"}, set())
    assert c.cancelled_but_received(cancelled, set(), set()) == []
    attempted = [c.DbDelivery(2, 101, 7, 1, "P", "hl7", "ORU101V1", "cancelled", attempts=1)]
    assert c.cancelled_but_received(attempted, {"ORU101V1"}, set()) == []  # answer lost
