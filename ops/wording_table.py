"""Before/after table of the vocabulary's wording: every finding in every region it may lie in
(so each side of a lateral finding), English and Chinese, label, findings sentence and impression.

    python -m ops.wording_table --before <git revision> > wording-table.md

"Before" renders the templates of `findings.json`/`regions.json` at the revision as the code of
that time did (`{region}` and `{size_mm}` only); "after" is the working tree's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

from shared.vocab import finding_label, load_vocab
from shared.vocab.loader import Language

SIZE_MM = 24.0  # a size for the sentences that state one


def _at_revision(revision: str, name: str) -> dict[str, Any]:
    text = subprocess.run(
        ["git", "show", f"{revision}:shared/vocab/{name}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, Any] = json.loads(text)
    return data


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def table(revision: str) -> str:
    vocab = load_vocab()
    old_findings = {f["code"]: f for f in _at_revision(revision, "findings.json")["findings"]}
    old_regions = {r["code"]: r for r in _at_revision(revision, "regions.json")["regions"]}
    lines = [
        f"# Wording before ({revision}) and after, every finding × region, sizes {SIZE_MM:g} mm",
        "",
        "Printed by `python -m ops.wording_table --before " + revision + "`.",
        "",
        "| finding | region | lang | label (new) | impression before | impression after "
        "| sentence before | sentence after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    languages: tuple[Language, ...] = ("en", "zh")
    for info in vocab.findings:
        old = old_findings[info.code]
        for region_code in info.regions:
            region = vocab.region(region_code)
            for lang in languages:
                old_name = old_regions[region_code][lang]
                before_sentence = old[f"sentence_{lang}"].format(
                    region=old_name, size_mm=round(SIZE_MM)
                )
                before_impression = old[f"impression_{lang}"].format(region=old_name)
                cells = [
                    info.code,
                    region_code,
                    lang,
                    finding_label(info.code, region_code, lang, vocab),
                    before_impression,
                    info.impression(lang, region),
                    before_sentence,
                    info.sentence(lang, region, SIZE_MM),
                ]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the old vocabulary")
    print(table(parser.parse_args().before), end="")


if __name__ == "__main__":
    main()
