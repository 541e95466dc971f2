"""The vocabulary files: complete, bilingual, coded, consistent with the generator."""

from __future__ import annotations

from shared.vocab import load_vocab

MEDREGA_CXR = {
    "left lung",
    "right lung",
    "mediastinum",
    "cardiac silhouette",
    "left hilar structures",
    "right hilar structures",
    "left clavicle",
    "right clavicle",
    "left hemidiaphragm",
    "right hemidiaphragm",
    "right atrium",
    "abdomen",
}


def test_medrega_chest_xray_regions_are_covered() -> None:
    v = load_vocab()
    assert MEDREGA_CXR <= {r.en for r in v.regions_for("cxr")}


def test_every_entry_is_bilingual_and_coded() -> None:
    v = load_vocab()
    assert v.version
    for r in v.regions:
        assert r.en and r.zh and r.snomed.code.isdigit() and r.snomed.scheme == "SCT"
        assert any("\u4e00" <= ch <= "\u9fff" for ch in r.zh)
    for f in v.findings:
        assert f.snomed.code.isdigit()
        for lang in ("en", "zh"):
            text = f.sentence(lang, v.region(f.regions[0]), 12.4)  # type: ignore[arg-type]
            assert "12 mm" in text and "{" not in text
            assert "{" not in f.impression(lang, v.region(f.regions[0]))  # type: ignore[arg-type]
    critical = {f.code for f in v.findings if f.critical}
    assert {"pneumothorax", "intracranial_haemorrhage"} <= critical
    assert v.normal.region_sentence("zh", "右肺") == "右肺未见明显异常。"


def test_each_domain_has_regions_and_findings() -> None:
    v = load_vocab()
    for d in v.domains:
        assert v.regions_for(d.code) and v.findings_for(d.code)
