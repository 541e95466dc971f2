"""A running Orthanc with our configuration: authenticated REST, and Chinese text that survives
its searches (/tools/find and DICOMweb QIDO-RS)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from services.pacs.local_orthanc import (
    OrthancClient,
    RunningOrthanc,
    free_tcp_port,
    running_orthanc,
)
from services.pacs.orthanc_config import DICOMWEB_PLUGIN_PATH
from shared.config import Settings
from tests.pacs.conftest import send_with_storescu
from tests.pacs.dicom_samples import new_study, write_ct_series

CHINESE_NAME = "王^小明"
CHINESE_NAME_WITHOUT_CHARSET = "李^四"


@pytest.fixture(scope="module")
def orthanc_without_routing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOrthanc]:
    # StableAge of an hour: these tests are about indexing and search, not routing.
    with running_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        Settings(),
        listener_port=free_tcp_port(),
        stable_age_s=3600,
    ) as orthanc:
        yield orthanc


def store_named_study(
    tmp_path: Path, orthanc: RunningOrthanc, name: str, *, declare_utf8: bool
) -> str:
    study = new_study(patient_name=name)
    [(path, _)] = write_ct_series(tmp_path, study, 1)
    if not declare_utf8:
        # A modality that writes UTF-8 but omits (0008,0005): Orthanc has to fall back on its
        # DefaultEncoding to read the name at all.
        dataset = pydicom.dcmread(path)
        del dataset.SpecificCharacterSet
        dataset["PatientName"].value = name.encode("utf-8")
        dataset.save_as(path)
        assert "SpecificCharacterSet" not in pydicom.dcmread(path)
    send_with_storescu([path], orthanc.dicom_port)
    return study.study_instance_uid


def test_rendered_config_uses_utf8_by_default(orthanc_without_routing: RunningOrthanc) -> None:
    config = json.loads(orthanc_without_routing.config_path.read_text(encoding="utf-8"))
    assert config["DefaultEncoding"] == "Utf8"
    system = orthanc_without_routing.client.get_json("/system")
    assert system["Name"] == "medrega-pacs"


def test_rest_api_refuses_anonymous_and_wrong_password(
    orthanc_without_routing: RunningOrthanc,
) -> None:
    client = orthanc_without_routing.client
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{client.base_url}/patients", timeout=5)
    assert anonymous.value.code == 401
    wrong = OrthancClient(client.base_url, client.user, client.password + "x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        wrong.get_json("/patients")
    assert refused.value.code == 401
    assert isinstance(client.get_json("/patients"), list)


@pytest.mark.parametrize(
    ("name", "declare_utf8"),
    [(CHINESE_NAME, True), (CHINESE_NAME_WITHOUT_CHARSET, False)],
    ids=["iso-ir-192", "no-specific-character-set"],
)
def test_chinese_patient_name_survives_tools_find(
    tmp_path: Path, orthanc_without_routing: RunningOrthanc, name: str, declare_utf8: bool
) -> None:
    study_uid = store_named_study(
        tmp_path, orthanc_without_routing, name, declare_utf8=declare_utf8
    )

    family_name = name.split("^")[0]
    answers = orthanc_without_routing.client.post_json(
        "/tools/find",
        {"Level": "Study", "Query": {"PatientName": f"{family_name}*"}, "Expand": True},
    )

    matching = [a for a in answers if a["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    assert len(matching) == 1, answers
    assert matching[0]["PatientMainDicomTags"]["PatientName"] == name


@pytest.mark.skipif(not DICOMWEB_PLUGIN_PATH.exists(), reason="orthanc-dicomweb not installed")
def test_chinese_patient_name_survives_dicomweb_qido(
    tmp_path: Path, orthanc_without_routing: RunningOrthanc
) -> None:
    study_uid = store_named_study(
        tmp_path, orthanc_without_routing, CHINESE_NAME, declare_utf8=True
    )

    query = urllib.parse.urlencode({"StudyInstanceUID": study_uid, "includefield": "00100010"})
    answers = orthanc_without_routing.client.get_json(f"/dicom-web/studies?{query}")

    assert len(answers) == 1
    assert answers[0]["00100010"]["Value"][0]["Alphabetic"] == CHINESE_NAME
