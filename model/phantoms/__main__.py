"""Write phantom studies to a folder as DICOM, one sub-folder per study.

    python -m model.phantoms --out DIR --count N [--domains cxr,chest_ct,abd_ct,brain_mr]
        [--split test|val|train] [--seed-start S] [--slices K] [--max-side M]
        [--transfer-syntax explicit|rle|jpeg-ls|jpeg2000]

Studies go round-robin across the domains; study i gets the (S + i)-th seed of the split
(model/phantoms/splits.py), so the same command always writes the same studies (same pixels,
names and UIDs). The demo and the tests call write_phantom_studies() directly.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from model.phantoms.dicom_writer import (
    TRANSFER_SYNTAXES,
    TransferSyntaxUnavailableError,
    WrittenStudy,
    resolve_transfer_syntax,
    write_study,
)
from model.phantoms.generator import generate_study
from model.phantoms.splits import SPLITS, Split, seeds
from model.phantoms.types import DOMAINS, Domain


def study_folder_name(domain: Domain, seed: int) -> str:
    return f"{domain}_{seed:07d}"


def write_phantom_study(
    domain: Domain,
    seed: int,
    out_dir: str | Path,
    *,
    n_slices: int | None = None,
    max_side: int | None = None,
    transfer_syntax: str = "explicit",
) -> WrittenStudy:
    """Generate the phantom (domain, seed) and write it to out_dir/<domain>_<seed>/.

    `max_side` renders a smaller matrix (quick tests and demos); None is full resolution."""
    study = generate_study(domain, seed, n_slices=n_slices, max_side=max_side)
    return write_study(
        study, Path(out_dir) / study_folder_name(domain, seed), transfer_syntax=transfer_syntax
    )


def write_phantom_studies(
    out_dir: str | Path,
    count: int,
    *,
    domains: Sequence[Domain] = DOMAINS,
    split: Split = "test",
    seed_start: int = 0,
    n_slices: int | None = None,
    max_side: int | None = None,
    transfer_syntax: str = "explicit",
) -> list[WrittenStudy]:
    """Write `count` studies round-robin across `domains`; see the module docstring for seeds."""
    if count < 0:
        raise ValueError("count must not be negative")
    if not domains:
        raise ValueError("at least one domain is needed")
    unknown = [domain for domain in domains if domain not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; use some of {', '.join(DOMAINS)}")
    # Fail before generating anything when the encoder is missing.
    resolve_transfer_syntax(transfer_syntax)
    return [
        write_phantom_study(
            domains[index % len(domains)],
            seed,
            out_dir,
            n_slices=n_slices,
            max_side=max_side,
            transfer_syntax=transfer_syntax,
        )
        for index, seed in enumerate(seeds(split, count, seed_start))
    ]


def _display_width(text: str) -> int:
    """Terminal columns: CJK characters take two, so Chinese names still line up."""
    return sum(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


def summary_table(written: Sequence[WrittenStudy]) -> str:
    header = ("study folder", "domain", "modality", "patient", "accession", "images", "findings")
    rows = [
        (
            study.study_dir.name,
            study.domain,
            study.modality,
            study.patient_name,
            study.accession_number or "(none)",
            str(len(study.files)),
            ",".join(study.finding_codes) or "normal",
        )
        for study in written
    ]
    widths = [
        max(_display_width(row[column]) for row in [header, *rows]) for column in range(len(header))
    ]
    lines = [
        "  ".join(
            cell + " " * (width - _display_width(cell))
            for cell, width in zip(row, widths, strict=True)
        )
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _domain_list(text: str) -> list[Domain]:
    domains = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [domain for domain in domains if domain not in DOMAINS]
    if unknown or not domains:
        raise argparse.ArgumentTypeError(f"domains must be some of {', '.join(DOMAINS)}")
    return domains  # type: ignore[return-value]  # checked against DOMAINS just above


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.phantoms", description="Write phantom studies as DICOM."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write studies into")
    parser.add_argument("--count", type=int, required=True, help="number of studies")
    parser.add_argument(
        "--domains",
        type=_domain_list,
        default=list(DOMAINS),
        help=f"comma-separated, round-robin (default {','.join(DOMAINS)})",
    )
    parser.add_argument("--split", choices=sorted(SPLITS), default="test")
    parser.add_argument("--seed-start", type=int, default=0, help="offset inside the split")
    parser.add_argument("--slices", type=int, default=None, help="slices per CT/MR series")
    parser.add_argument(
        "--max-side", type=int, default=None, help="render at most this many pixels a side"
    )
    parser.add_argument(
        "--transfer-syntax",
        choices=sorted(TRANSFER_SYNTAXES),
        default="explicit",
        help="lossless encoding of the pixel data (default explicit VR little endian)",
    )
    args = parser.parse_args(argv)
    if args.count < 0 or args.seed_start < 0:
        parser.error("--count and --seed-start must be >= 0")
    if (args.slices is not None and args.slices < 1) or (
        args.max_side is not None and args.max_side < 16
    ):
        parser.error("--slices must be >= 1 and --max-side >= 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = write_phantom_studies(
            args.out,
            args.count,
            domains=args.domains,
            split=args.split,
            seed_start=args.seed_start,
            n_slices=args.slices,
            max_side=args.max_side,
            transfer_syntax=args.transfer_syntax,
        )
    except (TransferSyntaxUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_table(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
