"""The page mounted on the gateway: Gradio's API exposes no secret, the API routes still answer.

The whole app runs on a real uvicorn (demo mode: the built-in simulator answers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from ki2api.app import create_app
from ki2api.settings import Settings
from tests.servers import ServerThread

API_KEY = "ui-api-test-key-0123456789"
SECRET_WORDS = re.compile(r"token|key|secret|password|admin|credential|auth", re.IGNORECASE)
# Components whose value is a secret: the pasted tokens, the admin key, the session states.
SECRET_ELEM_IDS = {"ki-own-token", "ki-admin-key", "ki-new-account"}

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    home = tmp_path_factory.mktemp("ui-api-home")
    settings = Settings(
        demo=True,
        api_key=API_KEY,
        api_key_is_default=False,
        kiro_token_file=home / "kiro-auth-token.json",
    )
    with ServerThread(create_app(settings, with_ui=True)) as srv:
        yield srv


def test_gradio_api_description_is_not_served(server) -> None:
    # The page's events are not an API: Gradio's description of them is closed with the other
    # routes the page does not use (ki2api/ui/guard.py).
    for query in ("", "?all_endpoints=true"):
        response = httpx.get(f"{server.url}/gradio_api/info{query}")
        assert response.status_code == 404
        assert not SECRET_WORDS.search(response.text)


def test_every_event_touching_a_secret_is_private(server) -> None:
    config = httpx.get(f"{server.url}/config").json()
    secret_ids = {
        c["id"]
        for c in config["components"]
        if c.get("type") == "state" or c.get("props", {}).get("elem_id") in SECRET_ELEM_IDS
    }
    assert len(secret_ids) >= len(SECRET_ELEM_IDS) + 3  # the boxes and three session states
    touching = [
        dep
        for dep in config["dependencies"]
        if secret_ids & set(dep.get("inputs", []) + dep.get("outputs", []))
    ]
    assert len(touching) >= 8  # chat x2, token use/forget, sign in/out, add/refresh/remove
    for dep in touching:
        assert dep["api_visibility"] == "private", dep.get("api_name")
    assert all(dep["api_visibility"] == "private" for dep in config["dependencies"])


def test_page_config(server) -> None:
    config = httpx.get(f"{server.url}/config").json()
    assert not config.get("ssr_mode")
    assert "runs" not in config.get("footer_links", [])
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_api_routes_still_answer_with_the_ui_mounted(server) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    models = httpx.get(f"{server.url}/v1/models", headers=headers)
    assert models.status_code == 200
    assert any(m["id"] == "claude-sonnet-4-6" for m in models.json()["data"])
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=headers,
        json={"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=10,
    )
    assert chat.status_code == 200
    assert "simulated" in chat.json()["choices"][0]["message"]["content"]
