"""Synthetic, deterministic patient and study demographics for phantom studies.

The patient depends on the seed alone, so one seed is one person whatever the domain (a hospital
sees the same patient in several studies); study-level attributes (accession, date, referrer)
depend on (domain, seed), so two studies of the same person never share an accession number.
About half the patients have Chinese names written the way Chinese hospitals send them: the
alphabetic (pinyin) group and the ideographic group, `Wang^Xiaoming=王^小明`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.phantoms.types import Domain

Sex = Literal["M", "F"]

# (pinyin, hanzi) pairs. Surnames are the most common ones in mainland China; given names are
# split by the sex they are usually given to so that Patient's Sex and the name agree.
_CHINESE_SURNAMES: tuple[tuple[str, str], ...] = (
    ("Wang", "王"),
    ("Li", "李"),
    ("Zhang", "张"),
    ("Liu", "刘"),
    ("Chen", "陈"),
    ("Yang", "杨"),
    ("Zhao", "赵"),
    ("Huang", "黄"),
    ("Zhou", "周"),
    ("Wu", "吴"),
    ("Xu", "徐"),
    ("Sun", "孙"),
    ("Ma", "马"),
    ("Zhu", "朱"),
    ("Hu", "胡"),
    ("Guo", "郭"),
    ("Lin", "林"),
    ("He", "何"),
)
_CHINESE_GIVEN_NAMES: dict[Sex, tuple[tuple[str, str], ...]] = {
    "M": (
        ("Xiaoming", "小明"),
        ("Jianguo", "建国"),
        ("Wei", "伟"),
        ("Qiang", "强"),
        ("Lei", "磊"),
        ("Jun", "军"),
        ("Haoran", "浩然"),
        ("Zhiwei", "志伟"),
        ("Yong", "勇"),
        ("Tao", "涛"),
        ("Guoqiang", "国强"),
        ("Chenggang", "成刚"),
    ),
    "F": (
        ("Li", "丽"),
        ("Fang", "芳"),
        ("Na", "娜"),
        ("Min", "敏"),
        ("Jing", "静"),
        ("Xiuying", "秀英"),
        ("Yan", "艳"),
        ("Hui", "慧"),
        ("Xiaohong", "晓红"),
        ("Meiling", "美玲"),
        ("Yuxin", "雨欣"),
        ("Lan", "兰"),
    ),
}
_WESTERN_SURNAMES: tuple[str, ...] = (
    "Smith",
    "Johnson",
    "Brown",
    "Garcia",
    "Miller",
    "Davis",
    "Martin",
    "Novak",
    "Muller",
    "Rossi",
    "Dubois",
    "OConnor",
    "Kowalski",
    "Jensen",
)
_WESTERN_GIVEN_NAMES: dict[Sex, tuple[str, ...]] = {
    "M": ("John", "James", "Peter", "Michael", "David", "Thomas", "Lukas", "Marco", "Erik"),
    "F": ("Mary", "Anna", "Sarah", "Laura", "Emma", "Julia", "Sofia", "Claire", "Ingrid"),
}
_INSTITUTIONS: tuple[str, ...] = (
    "Medrega Phantom General Hospital",
    "Medrega Phantom Cancer Centre",
    "医影幻影第一人民医院",  # "Medrega Phantom First People's Hospital"
)

# Age at the start of the study year; the birth date is the patient's, whatever the domain, so
# one Patient ID never comes with two birth dates.
_AGE_RANGE_YEARS = (18, 89)
# Studies are dated inside one fixed year so that written files never depend on today's date.
_FIRST_STUDY_DATE = dt.date(2025, 1, 6)
_STUDY_DATE_SPAN_DAYS = 364
# Hospitals do send studies without an accession number (unscheduled or emergency exams).
MISSING_ACCESSION_PROBABILITY = 0.1


@dataclass(frozen=True)
class Demographics:
    """What the Patient, Patient Study and General Study modules need, already DICOM-formatted."""

    patient_name: str  # DICOM PN, possibly with an ideographic component group
    patient_id: str
    patient_birth_date: str  # YYYYMMDD
    patient_sex: Sex
    patient_age: str  # AS, e.g. "054Y"
    patient_size_m: float
    patient_weight_kg: float
    accession_number: str | None  # None: the study is sent without one
    study_id: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    referring_physician_name: str
    institution_name: str

    @property
    def has_non_ascii_text(self) -> bool:
        return any(not text.isascii() for text in self._text_fields())

    def _text_fields(self) -> tuple[str, ...]:
        return (
            self.patient_name,
            self.patient_id,
            self.accession_number or "",
            self.study_id,
            self.referring_physician_name,
            self.institution_name,
        )


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded from a stable hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(str(part) for part in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _person_name(rng: np.random.Generator, sex: Sex, *, chinese: bool) -> str:
    if chinese:
        surname_pinyin, surname_hanzi = _CHINESE_SURNAMES[rng.integers(len(_CHINESE_SURNAMES))]
        given = _CHINESE_GIVEN_NAMES[sex]
        given_pinyin, given_hanzi = given[rng.integers(len(given))]
        return f"{surname_pinyin}^{given_pinyin}={surname_hanzi}^{given_hanzi}"
    surname = _WESTERN_SURNAMES[rng.integers(len(_WESTERN_SURNAMES))]
    given_names = _WESTERN_GIVEN_NAMES[sex]
    return f"{surname}^{given_names[rng.integers(len(given_names))]}"


def _random_sex(rng: np.random.Generator) -> Sex:
    return "M" if rng.random() < 0.5 else "F"


def _completed_years(birth_date: dt.date, on: dt.date) -> int:
    had_birthday = (on.month, on.day) >= (birth_date.month, birth_date.day)
    return on.year - birth_date.year - (0 if had_birthday else 1)


def synthesize_demographics(domain: Domain, seed: int) -> Demographics:
    """Deterministic demographics for the phantom study (domain, seed)."""
    patient_rng = _rng("patient", seed)
    sex = _random_sex(patient_rng)
    patient_name = _person_name(patient_rng, sex, chinese=patient_rng.random() < 0.5)
    patient_id = f"PH{seed:08d}"
    size_m = float(patient_rng.normal(1.76 if sex == "M" else 1.63, 0.07))
    weight_kg = float(patient_rng.normal(78 if sex == "M" else 64, 12))
    age_at_first_date = int(patient_rng.integers(_AGE_RANGE_YEARS[0], _AGE_RANGE_YEARS[1] + 1))
    birth_date = _FIRST_STUDY_DATE - dt.timedelta(
        days=int(age_at_first_date * 365.25) + int(patient_rng.integers(365))
    )

    study_rng = _rng("study", domain, seed)
    study_date = _FIRST_STUDY_DATE + dt.timedelta(
        days=int(study_rng.integers(_STUDY_DATE_SPAN_DAYS))
    )
    study_time = dt.time(
        hour=int(study_rng.integers(7, 20)),
        minute=int(study_rng.integers(60)),
        second=int(study_rng.integers(60)),
    )
    age_years = _completed_years(birth_date, study_date)

    has_accession = study_rng.random() >= MISSING_ACCESSION_PROBABILITY
    domain_index = ("cxr", "chest_ct", "abd_ct", "brain_mr").index(domain)
    accession_number = f"A{domain_index}{seed:09d}" if has_accession else None
    referrer_sex = _random_sex(study_rng)
    referring_physician = _person_name(study_rng, referrer_sex, chinese=study_rng.random() < 0.5)
    institution = _INSTITUTIONS[study_rng.integers(len(_INSTITUTIONS))]

    return Demographics(
        patient_name=patient_name,
        patient_id=patient_id,
        patient_birth_date=birth_date.strftime("%Y%m%d"),
        patient_sex=sex,
        patient_age=f"{age_years:03d}Y",
        patient_size_m=round(min(max(size_m, 1.40), 2.05), 2),
        patient_weight_kg=round(min(max(weight_kg, 38.0), 150.0), 1),
        accession_number=accession_number,
        study_id=f"{domain_index}{seed % 10**7:07d}"[-16:],
        study_date=study_date.strftime("%Y%m%d"),
        study_time=study_time.strftime("%H%M%S"),
        referring_physician_name=referring_physician,
        institution_name=institution,
    )
