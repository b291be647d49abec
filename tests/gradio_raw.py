"""The page's events called as a stranger would: raw HTTP to Gradio's queue, no browser.

``POST /gradio_api/queue/join`` with an event's ``fn_index`` and input values, then
``GET /gradio_api/queue/data?session_hash=...`` for its messages (server-sent events). The
events come from the page's config (``GET /config``: ``dependencies``, ``components``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    fn_index: int
    inputs: list[dict[str, Any]]  # the input components' config entries
    outputs: list[int]
    backend: bool  # has a Python function (the Stop button's event has none)
    targets: list[Any] = field(default_factory=list)


def page_config(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/config", timeout=30)
    response.raise_for_status()
    config: dict[str, Any] = response.json()
    return config


def events(config: dict[str, Any]) -> list[Event]:
    components = {c["id"]: c for c in config["components"]}
    return [
        Event(
            fn_index=dep["id"],
            inputs=[components[i] for i in dep.get("inputs", [])],
            outputs=list(dep.get("outputs", [])),
            backend=bool(dep.get("backend_fn", True)),
            targets=list(dep.get("targets", [])),
        )
        for dep in config["dependencies"]
    ]


def component_id(config: dict[str, Any], elem_id: str) -> int:
    for c in config["components"]:
        if c.get("props", {}).get("elem_id") == elem_id:
            return int(c["id"])
    raise KeyError(elem_id)


def event_for(config: dict[str, Any], trigger_elem_id: str, trigger: str) -> int:
    """fn_index of the event ``trigger`` ("click", "submit") on the component ``elem_id``."""
    target = component_id(config, trigger_elem_id)
    for dep in config["dependencies"]:
        if [target, trigger] in dep.get("targets", []) and dep.get("backend_fn", True):
            return int(dep["id"])
    raise KeyError((trigger_elem_id, trigger))


def default_value(component: dict[str, Any]) -> Any:
    props = component.get("props", {})
    kind = component.get("type")
    if kind == "state":
        return None
    if kind == "chatbot":
        return []
    if kind == "checkbox":
        return bool(props.get("value"))
    return props.get("value")


def hostile_value(component: dict[str, Any], text: str) -> Any:
    """What a stranger might send instead: text everywhere text goes, True for flags (state
    values are taken from the session, whatever the caller sends)."""
    kind = component.get("type")
    if kind in ("textbox", "markdown", "code"):
        return text
    if kind in ("checkbox", "state"):
        return True
    if kind == "chatbot":  # a conversation, in the shape Gradio 6's Chatbot takes
        return [
            {"role": "user", "content": [{"type": "text", "text": text}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        ]
    return default_value(component)


class Session:
    """One Gradio session (a browser tab's worth), driven over raw HTTP."""

    def __init__(self, url: str, session_hash: str | None = None) -> None:
        self.url = url
        self.hash = session_hash or secrets.token_hex(6)

    def join(self, fn_index: int, data: list[Any], timeout: float = 30) -> httpx.Response:
        body = {
            "data": data,
            "fn_index": fn_index,
            "session_hash": self.hash,
            "event_data": None,
            "trigger_id": None,
        }
        return httpx.post(f"{self.url}/gradio_api/queue/join", json=body, timeout=timeout)

    def messages(self, timeout: float = 30, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Read the session's messages until its stream closes (or ``stop_after`` messages)."""
        out: list[dict[str, Any]] = []
        params = {"session_hash": self.hash}
        with httpx.stream(
            "GET", f"{self.url}/gradio_api/queue/data", params=params, timeout=timeout
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                out.append(message)
                if message.get("msg") == "close_stream":
                    break
                if stop_after is not None and len(out) >= stop_after:
                    break
        return out

    def call(self, fn_index: int, data: list[Any], timeout: float = 30) -> list[dict[str, Any]]:
        joined = self.join(fn_index, data, timeout)
        assert joined.status_code == 200, (joined.status_code, joined.text[:300])
        return self.messages(timeout)


def final_output(messages: list[dict[str, Any]]) -> list[Any] | None:
    for message in reversed(messages):
        if message.get("msg") == "process_completed":
            output = message.get("output") or {}
            data = output.get("data")
            return list(data) if isinstance(data, list) else None
    return None


def all_text(messages: list[dict[str, Any]]) -> str:
    return json.dumps(messages, ensure_ascii=False)
