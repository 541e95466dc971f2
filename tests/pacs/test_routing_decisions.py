"""The routing plugin's decision functions, imported outside Orthanc (the module allows it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.pacs import route_stable_studies as plugin
from services.pacs.orthanc_config import render_orthanc_config
from shared.config import Settings
from shared.dicom.uids import MEDREGA_UID_ROOT, new_uid

SYSTEM_PYTHON = "/usr/bin/python3"  # what orthanc-python 4.0 embeds on Debian


@pytest.fixture
def routing_settings(tmp_path: Path) -> plugin.RoutingSettings:
    # The plugin reads exactly what the renderer writes.
    return plugin.parse_routing_settings(
        render_orthanc_config(Settings(environment="test"), tmp_path)
    )


def test_settings_parse_from_rendered_config(routing_settings: plugin.RoutingSettings) -> None:
    assert routing_settings.target_modality == "medrega-ai"
    assert routing_settings.own_sop_instance_uid_root == MEDREGA_UID_ROOT
    assert routing_settings.batch_size > 0
    assert routing_settings.retry_delays_s[0] > 0


def test_missing_section_is_refused() -> None:
    with pytest.raises(ValueError, match="MedregaRouting"):
        plugin.parse_routing_settings({"Name": "Orthanc"})


def test_root_without_trailing_dot_does_not_match_a_longer_component() -> None:
    settings = plugin.parse_routing_settings(
        {
            "MedregaRouting": {
                "TargetModality": "ai",
                "OwnSopInstanceUidRoot": "1.2.3",
                "OwnManufacturer": "us",
                "RoutedMetadata": "Routed",
            }
        }
    )
    assert plugin.is_own_output({"SOPInstanceUID": "1.2.3.4"}, settings)
    assert not plugin.is_own_output({"SOPInstanceUID": "1.2.34.5"}, settings)


@pytest.mark.parametrize(
    ("tags", "own"),
    [
        ({"SOPInstanceUID": new_uid(), "Manufacturer": "Someone"}, True),
        ({"SOPInstanceUID": "1.2.840.113619.2.1", "Manufacturer": "medrega-pacs"}, True),
        ({"SOPInstanceUID": "1.2.840.113619.2.1", "Manufacturer": "MEDREGA-PACS "}, True),
        ({"SOPInstanceUID": "1.2.840.113619.2.1", "Manufacturer": "GE MEDICAL SYSTEMS"}, False),
        # The phantom generator's images are input like a modality's and must be routed.
        ({"SOPInstanceUID": "1.2.840.113619.2.1", "Manufacturer": "medrega-pacs phantom"}, False),
        ({"SOPInstanceUID": "1.2.840.113619.2.1"}, False),
        ({}, False),
    ],
)
def test_own_output_is_recognised(
    routing_settings: plugin.RoutingSettings, tags: dict[str, str], own: bool
) -> None:
    assert plugin.is_own_output(tags, routing_settings) is own


def test_unrouted_instances_keep_order() -> None:
    assert plugin.unrouted_instances(["a", "b", "c", "d"], ["c", "a"]) == ["b", "d"]
    assert plugin.unrouted_instances(["a"], ["a"]) == []


def test_batches_cover_everything_once() -> None:
    items = [str(number) for number in range(7)]
    assert plugin.batches(items, 3) == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert plugin.batches([], 3) == []


def test_retry_delay_backs_off_then_stays_at_the_last_value() -> None:
    delays = (2.0, 5.0, 15.0)
    assert [plugin.retry_delay_s(attempt, delays) for attempt in range(1, 6)] == [
        2.0,
        5.0,
        15.0,
        15.0,
        15.0,
    ]


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("Success", "success"),
        ("Failure", "failure"),
        ("Pending", None),
        ("Running", None),
        ("Paused", None),
        ("Retry", None),
    ],
)
def test_job_outcome(state: str, outcome: str | None) -> None:
    assert plugin.job_outcome({"State": state}) == outcome


def test_plugin_script_uses_only_the_standard_library_of_the_system_python() -> None:
    """Orthanc runs it with Debian's Python 3.11, outside our venv: no project imports."""
    script = Path(plugin.__file__)
    result = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", f"import runpy; runpy.run_path({str(script)!r})"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    source = script.read_text(encoding="utf-8")
    assert "from shared" not in source and "from services" not in source


def test_changed_resources_from_the_change_log() -> None:
    changes = [
        {"ChangeType": "NewInstance", "ID": "i1"},
        {"ChangeType": "NewSeries", "ID": "s1"},
        {"ChangeType": "NewStudy", "ID": "st1"},
        {"ChangeType": "UpdatedMetadata", "ID": "i0"},  # our own "routed" marks
        {"ChangeType": "StableStudy", "ID": "st2"},
        {"ChangeType": "StablePatient", "ID": "p1"},
        {"ChangeType": "NewInstance", "ID": "i2"},
    ]
    studies, instances = plugin.changed_resources(changes)
    assert studies == {"st1", "st2"}
    assert instances == {"i1", "i2"}


def test_recovery_timing_comes_from_orthanc_settings(tmp_path: Path) -> None:
    config = render_orthanc_config(
        Settings(environment="test"), tmp_path, stable_age_s=7, checkpoint_tick_s=0.5
    )
    settings = plugin.parse_routing_settings(config)
    assert settings.stable_age_s == 7.0
    assert settings.checkpoint_tick_s == 0.5
