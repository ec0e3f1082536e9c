"""``/api/profiles`` against a real API process and Redis: list, read, create, update, and the 4xx cases."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import pytest

from iotp.profiles import shipped_profiles
from tests.dashboard_api.conftest import module_settings, wait_api_ready
from tests.support.processes import ProcessGroup

pytestmark = pytest.mark.integration

VIEWER_TOKEN = "viewer-token-for-profiles"
SOIL = {
    "description": "soil probe",
    "expected_interval_s": 60,
    "metrics": {"moisture": {"unit": "%", "valid_min": 0, "valid_max": 100, "normal_min": 10, "normal_max": 60}},
}


@pytest.fixture(scope="module")
def profiles_api(stack_settings, tmp_path_factory) -> Iterator[httpx.Client]:
    """An API process with an operator token (the default) and a viewer token; a client with the operator's."""
    settings = module_settings(stack_settings, tmp_path_factory.mktemp("profiles"))
    group = ProcessGroup(settings, tmp_path_factory.mktemp("profiles-logs"))
    proc = group.start("api", env={"IOTP_API_TOKENS": f"viewer:{VIEWER_TOKEN}"})
    try:
        wait_api_ready(settings, proc)
        headers = {"Authorization": f"Bearer {settings.api_token}"}
        with httpx.Client(base_url=settings.api_url, headers=headers, timeout=20) as client:
            yield client
    finally:
        group.stop_all()


def test_list_has_the_shipped_types_with_units(profiles_api):
    body = profiles_api.get("/api/profiles").json()
    by_type = {item["device_type"]: item for item in body["items"]}
    assert {"climate", "vibration", "power"} <= set(by_type)
    assert by_type["climate"]["source"] == "file"
    assert by_type["climate"]["profile"]["metrics"]["temperature"]["unit"] == "°C"
    assert by_type["power"]["profile"]["metrics"]["voltage"]["valid_max"] == 500
    one = profiles_api.get("/api/profiles/vibration").json()
    assert one["profile"] == shipped_profiles()["vibration"].model_dump(mode="json")


def test_create_then_update(profiles_api):
    before = profiles_api.get("/api/profiles").json()["version"]
    created = profiles_api.put("/api/profiles/soil", json=SOIL)
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True and created.json()["version"] > before
    assert profiles_api.get("/api/profiles/soil").json()["profile"]["metrics"]["moisture"]["normal_max"] == 60

    changed = copy.deepcopy(SOIL)
    changed["metrics"]["moisture"]["normal_max"] = 45
    changed["metrics"]["moisture"]["threshold"] = {"max_rate": 2.5}
    updated = profiles_api.put("/api/profiles/soil", json=changed)
    assert updated.status_code == 200, updated.text
    assert updated.json()["created"] is False
    stored = profiles_api.get("/api/profiles/soil").json()
    assert (stored["source"], stored["profile"]["metrics"]["moisture"]["normal_max"]) == ("api", 45)
    assert stored["profile"]["metrics"]["moisture"]["threshold"]["max_rate"] == 2.5
    assert "soil" in {i["device_type"] for i in profiles_api.get("/api/profiles").json()["items"]}


def _bad(**changes) -> dict:
    body = copy.deepcopy(SOIL)
    body["metrics"]["moisture"].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_bad(normal_max=160), "normal range [10.0, 160.0] must lie inside the valid range [0.0, 100.0]"),
        (_bad(valid_min=200), "valid_min 200.0 must be below valid_max 100.0"),
        (_bad(unit_of_measure="%"), "Extra inputs are not permitted"),
        ({**SOIL, "metrics": {}}, "at least 1 item"),
        ({**SOIL, "metrics": {"Moisture!": SOIL["metrics"]["moisture"]}}, "String should match pattern"),
        ({"description": "no metrics"}, "Field required"),
    ],
)
def test_invalid_profile_is_422_with_a_message_and_stores_nothing(profiles_api, body, message):
    resp = profiles_api.put("/api/profiles/broken", json=body)
    assert resp.status_code == 422, resp.text
    assert message in resp.text
    assert profiles_api.get("/api/profiles/broken").status_code == 404


def test_bad_type_name_unknown_type_and_roles(profiles_api):
    assert profiles_api.put("/api/profiles/Bad%20Type", json=SOIL).status_code == 422
    missing = profiles_api.get("/api/profiles/nosuchtype")
    assert missing.status_code == 404 and "nosuchtype" in missing.json()["detail"]
    url = str(profiles_api.base_url).rstrip("/") + "/api/profiles"
    assert httpx.get(url, timeout=10).status_code == 401
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    assert httpx.get(url, headers=viewer, timeout=10).status_code == 200
    denied = httpx.put(url + "/soil2", json=SOIL, headers=viewer, timeout=10)
    assert denied.status_code == 403, denied.text
    assert profiles_api.get("/api/profiles/soil2").status_code == 404
