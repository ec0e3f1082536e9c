"""API tokens with roles, the browser's session cookie and token hygiene, against a real ``iotp api`` process
over real HTTP and WebSocket connections."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets

from dashboard_api.auth import COOKIE, TokenConfigError, parse_tokens, role_of
from iotp.settings import Settings
from tests.dashboard_api.conftest import API_ENV, make_alert, module_settings, open_alert, wait_api_ready
from tests.support.processes import ProcessGroup

pytestmark = pytest.mark.integration

VIEWER = f"view-{uuid.uuid4().hex}"
HASHED_OPERATOR = f"op2-{uuid.uuid4().hex}"  # configured only as its SHA-256


@pytest.fixture(scope="module")
def served(stack_settings, tmp_path_factory) -> Iterator[tuple[Settings, object]]:
    settings = module_settings(stack_settings, tmp_path_factory.mktemp("auth"))
    settings = settings.model_copy(update={"api_token": f"op-{uuid.uuid4().hex}"})
    tokens = f"viewer:{VIEWER},operator:sha256:{hashlib.sha256(HASHED_OPERATOR.encode()).hexdigest()}"
    group = ProcessGroup(settings, tmp_path_factory.mktemp("auth-logs"))
    proc = group.start("api", env={**API_ENV, "IOTP_API_TOKENS": tokens})
    try:
        wait_api_ready(settings, proc)
        yield settings, proc
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def api(served) -> Settings:
    return served[0]


@pytest.fixture(scope="module")
def rds(api):
    import redis

    client = redis.Redis.from_url(api.redis_url)
    yield client
    client.close()


def _ack(api: Settings, alert_id: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{api.api_url}/api/alerts/{alert_id}/ack", json={"by": "test"}, timeout=10, **kwargs)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_viewer_reads_but_cannot_ack_operator_can(api, rds):
    from iotp.topics import redis_names

    alert = make_alert(f"auth-{uuid.uuid4().hex[:6]}")
    open_alert(rds, redis_names(api), alert)
    listed = httpx.get(f"{api.api_url}/api/alerts", headers=_bearer(VIEWER), timeout=10)
    assert listed.status_code == 200 and alert["alert_id"] in {a["alert_id"] for a in listed.json()["items"]}

    refused = _ack(api, alert["alert_id"], headers=_bearer(VIEWER))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this needs the operator role; the token has viewer"
    assert rds.hget(redis_names(api).alert_acks, alert["alert_id"]) is None, "a refused ack stored nothing"

    assert _ack(api, alert["alert_id"]).status_code == 401  # no token at all: 401, not 403
    acked = _ack(api, alert["alert_id"], headers={"X-API-Token": api.api_token})
    assert acked.status_code == 200 and acked.json()["created"] is True

    other = make_alert(f"auth-{uuid.uuid4().hex[:6]}")
    open_alert(rds, redis_names(api), other)
    assert _ack(api, other["alert_id"], headers=_bearer(HASHED_OPERATOR)).json()["created"] is True


def test_me_reports_the_role(api):
    assert httpx.get(f"{api.api_url}/auth/me", headers=_bearer(VIEWER)).json() == {"role": "viewer"}
    assert httpx.get(f"{api.api_url}/auth/me", headers=_bearer(api.api_token)).json() == {"role": "operator"}
    assert httpx.get(f"{api.api_url}/auth/me").status_code == 401


def test_query_string_tokens_are_not_accepted_for_rest(api):
    assert httpx.get(f"{api.api_url}/api/devices?token={api.api_token}").status_code == 401


def test_token_link_becomes_an_httponly_cookie_and_leaves_the_url(api):
    resp = httpx.get(f"{api.api_url}/?token={VIEWER}", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    wrong = httpx.get(f"{api.api_url}/?token=wrong", follow_redirects=False)
    assert wrong.status_code == 303 and "set-cookie" not in wrong.headers

    with httpx.Client(base_url=api.api_url, timeout=10) as browser:
        assert browser.post("/auth/login", json={"token": "wrong"}).status_code == 401
        assert browser.post("/auth/login", json={"token": VIEWER}).status_code == 204
        assert browser.get("/auth/me").json() == {"role": "viewer"}
        assert browser.get("/api/devices").status_code == 200
        # a cookie sent along by another site's page is not a login
        assert browser.get("/api/devices", headers={"Origin": "http://evil.example"}).status_code == 401
        assert browser.post("/auth/logout").status_code == 204
        assert browser.get("/api/devices").status_code == 401


async def test_websocket_authenticates_by_cookie_or_header_for_any_role(api):
    url = api.api_url.replace("http", "ws") + "/ws?channels=heartbeat"
    async with websockets.connect(url, additional_headers={"Cookie": f"{COOKIE}={VIEWER}"}) as ws:
        assert ws.response.status_code == 101
    async with websockets.connect(url, additional_headers=_bearer(HASHED_OPERATOR)) as ws:
        assert ws.response.status_code == 101
    with pytest.raises(websockets.InvalidStatus) as info:  # cross-site WebSocket hijacking with the cookie
        async with websockets.connect(url, additional_headers={"Cookie": f"{COOKIE}={VIEWER}"}, origin="http://evil"):
            pass
    assert info.value.response.status_code == 401


async def test_no_token_in_the_access_log(served):
    api, proc = served
    httpx.get(f"{api.api_url}/?token={api.api_token}", follow_redirects=False)
    httpx.get(f"{api.api_url}/api/pipeline?token={VIEWER}&x=1")
    httpx.get(f"{api.api_url}/api/pipeline", headers=_bearer(HASHED_OPERATOR))
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(api.api_url.replace("http", "ws") + f"/ws?token={VIEWER}"):
            pass
    marker = f"/health/live?done={uuid.uuid4().hex}"
    httpx.get(api.api_url + marker)

    from tests.support.waiting import wait_for

    log = wait_for(lambda: marker in proc.output() and proc.output(), 10, message="access log written")
    assert "GET /?token=*** HTTP" in log, "the requests are logged, with the token redacted"
    assert "GET /api/pipeline?token=***&x=1 HTTP" in log
    assert '"WebSocket /ws?token=***" 401' in log
    for secret in (api.api_token, VIEWER, HASHED_OPERATOR):
        assert secret not in log


def test_served_page_and_script_hold_no_token(api):
    with httpx.Client(base_url=api.api_url, timeout=10) as client:
        client.post("/auth/login", json={"token": api.api_token})  # logged in, as a browser would be
        bodies = [client.get(path).text for path in ("/", "/static/app.js", "/static/index.html")]
    for body in bodies:
        for secret in (api.api_token, VIEWER, "dev-token"):
            assert secret not in body


def test_token_config_is_checked():
    base = Settings(_env_file=None, api_token="op")
    entries = parse_tokens(base.model_copy(update={"api_tokens": "viewer:v1, operator:sha256:" + "ab" * 32}))
    assert [e.role for e in entries] == ["operator", "viewer", "operator"]
    assert role_of(entries, "v1") == "viewer" and role_of(entries, "op") == "operator"
    assert role_of(entries, "nope") is None and role_of(entries, "") is None
    for bad in ("admin:x", "viewer", "viewer:", "viewer:sha256:12"):
        with pytest.raises(TokenConfigError):
            parse_tokens(base.model_copy(update={"api_tokens": bad}))
