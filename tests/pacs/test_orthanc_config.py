"""The rendered Orthanc configuration: what a PACS admin would check before switching it on."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from services.pacs.orthanc_config import (
    AI_NODE_MODALITY,
    PYTHON_PLUGIN_PATH,
    ROUTED_METADATA_NAME,
    ROUTING_CONFIG_KEY,
    ROUTING_PLUGIN_SCRIPT,
    http_port_from_url,
    main,
    render_orthanc_config,
)
from shared.config import REPO_ROOT, Settings
from shared.dicom.uids import MEDREGA_UID_ROOT


def settings(**values: object) -> Settings:
    return Settings(environment="test", **values)  # type: ignore[arg-type]


def test_config_follows_settings(tmp_path: Path) -> None:
    config = render_orthanc_config(
        settings(
            pacs_ae_title="HOSPITAL_PACS",
            pacs_port=11104,
            pacs_http_url="http://127.0.0.1:18042",
            pacs_http_user="imaging",
            pacs_http_password=SecretStr("s3cret-from-vault"),
            pacs_stable_age_s=45,
            listener_ae_title="AI_NODE",
            listener_host="10.0.0.7",
            listener_port=11112,
        ),
        tmp_path,
    )

    assert config["DicomAet"] == "HOSPITAL_PACS"
    assert config["DicomPort"] == 11104
    assert config["HttpPort"] == 18042
    assert config["StableAge"] == 45
    assert config["RegisteredUsers"] == {"imaging": "s3cret-from-vault"}
    assert config["DicomModalities"][AI_NODE_MODALITY]["AET"] == "AI_NODE"
    assert config["DicomModalities"][AI_NODE_MODALITY]["Host"] == "10.0.0.7"
    assert config["DicomModalities"][AI_NODE_MODALITY]["Port"] == 11112
    assert config["StorageDirectory"] == str(tmp_path.resolve() / "storage")
    assert config["IndexDirectory"] == str(tmp_path.resolve() / "index")


def test_overrides_win_over_settings(tmp_path: Path) -> None:
    config = render_orthanc_config(
        settings(),
        tmp_path,
        http_port=1,
        dicom_port=2,
        listener_port=3,
        listener_host="127.0.0.2",
        listener_ae_title="OTHER_AI",
        stable_age_s=4,
    )
    assert (config["HttpPort"], config["DicomPort"], config["StableAge"]) == (1, 2, 4)
    ai_node = config["DicomModalities"][AI_NODE_MODALITY]
    assert (ai_node["AET"], ai_node["Host"], ai_node["Port"]) == ("OTHER_AI", "127.0.0.2", 3)


def test_security_and_encoding_defaults(tmp_path: Path) -> None:
    config = render_orthanc_config(settings(), tmp_path)

    assert config["DefaultEncoding"] == "Utf8"
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    # Development fallback password, never an empty one.
    assert config["RegisteredUsers"] == {"medrega": "medrega-development-only"}
    assert config["DicomAlwaysAllowStore"] is True
    assert not any(config[f"DicomAlwaysAllow{what}"] for what in ("Find", "Get", "Move"))
    ai_node = config["DicomModalities"][AI_NODE_MODALITY]
    assert not any(ai_node[f"Allow{what}"] for what in ("Find", "Get", "Move"))
    assert config["OverwriteInstances"] is False
    assert config["DeidentifyLogs"] is True


def test_plugin_wiring_uses_orthanc_1_10_top_level_keys(tmp_path: Path) -> None:
    config = render_orthanc_config(settings(), tmp_path)

    assert config["Plugins"][0] == str(PYTHON_PLUGIN_PATH)
    assert config["PythonScript"] == str(ROUTING_PLUGIN_SCRIPT)
    assert Path(config["PythonScript"]).is_file()
    assert config["PythonVerbose"] is False
    assert "Python" not in config  # the section form came after orthanc-python 4.0
    assert ROUTED_METADATA_NAME in config["UserMetadata"]
    assert 1024 <= config["UserMetadata"][ROUTED_METADATA_NAME] <= 65535
    routing = config[ROUTING_CONFIG_KEY]
    assert routing["TargetModality"] in config["DicomModalities"]
    assert routing["OwnSopInstanceUidRoot"] == MEDREGA_UID_ROOT
    assert routing["OwnManufacturer"] == "medrega-pacs"
    assert routing["RoutedMetadata"] == ROUTED_METADATA_NAME


def test_http_port_from_url() -> None:
    assert http_port_from_url("http://127.0.0.1:8042") == 8042
    assert http_port_from_url("http://pacs.local/") == 80
    assert http_port_from_url("https://pacs.local/") == 443


def test_cli_writes_a_private_config_file(tmp_path: Path) -> None:
    out = tmp_path / "conf" / "orthanc.json"
    assert main(["--workdir", str(tmp_path / "work"), "--out", str(out), "--stable-age", "3"]) == 0

    config = json.loads(out.read_text(encoding="utf-8"))
    assert config["StableAge"] == 3
    assert (tmp_path / "work" / "storage").is_dir()
    # It holds the REST password.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_cli_as_module_with_default_output(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.pacs.orthanc_config", "--workdir", str(tmp_path)]
        + ["--http-port", "18080", "--dicom-port", "14242", "--listener-port", "14243"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "orthanc.json").read_text(encoding="utf-8"))
    assert (config["HttpPort"], config["DicomPort"]) == (18080, 14242)
    assert config["DicomModalities"][AI_NODE_MODALITY]["Port"] == 14243
