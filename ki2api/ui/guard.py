"""The page's door: only the Gradio routes the page uses are served, and who is reading.

Gradio mounts some forty routes (uploads, file serving, a reverse proxy, an API of its own,
monitoring, "vibe" editing...). The page needs a handful: its HTML, config and assets, and the
event queue (join, the answer stream, cancel, heartbeat). Every other path under the mount
answers 404 here, before Gradio sees it, so a route a Gradio upgrade adds stays closed until it
is looked at (the route list in docs/security.md is kept in step by a test).

The same layer watches the answer streams (``GET /gradio_api/queue/data?session_hash=...``):
:class:`Readers` knows which sessions have one open, so the playground starts an upstream request
only for a visitor who reads its answer, and closes it the moment they stop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

QUEUE_DATA = "/gradio_api/queue/data"
QUEUE_JOIN = "/gradio_api/queue/join"

# (methods, path pattern): what the page's browser code asks for. A GET also allows HEAD.
PAGE_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(methods.split()), re.compile(pattern))
    for methods, pattern in (
        ("GET HEAD", r"/"),
        ("GET HEAD", r"/config/?"),  # the page's layout and events (the HTML carries it too)
        ("GET HEAD", r"/(assets|static)/[^?#]+"),  # the page's scripts, styles, fonts
        ("GET HEAD", r"/(theme\.css|favicon\.ico|robots\.txt|manifest\.json)"),
        ("POST", r"/gradio_api/queue/join"),  # run an event (each checks who may)
        ("GET", r"/gradio_api/queue/data"),  # a session's answers (server-sent events)
        ("POST", r"/gradio_api/cancel"),  # Stop
        ("GET", r"/gradio_api/heartbeat/[A-Za-z0-9_-]+"),  # the session is alive
    )
)


def page_route_allowed(method: str, path: str) -> bool:
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in PAGE_ROUTES)


def walk_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, full path) of every route, into mounts (the page's) and included routers."""
    for route in _flat(routes):
        if isinstance(route, Mount):
            yield from walk_routes(route.routes, prefix + route.path)
            continue
        path = getattr(route, "path", None)
        if path is None:
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            yield method, prefix + path


def _flat(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    # Newer FastAPI keeps included routers as one entry each; older ones copy their routes in.
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        yield from routes
        return
    for context in iter_route_contexts(routes):
        yield context.route if isinstance(context.route, Mount) else context


def path_patterns(routes: Sequence[BaseRoute]) -> list[re.Pattern[str]]:
    """The compiled path of every route in ``routes`` (the app's own, before the page)."""
    return [compile_path(path)[0] for path in sorted({p for _, p in walk_routes(routes)})]


class Readers:
    """Open answer streams per Gradio session. Entries live only while a stream is open."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}

    def reading(self, session: str) -> bool:
        return self._open.get(session, 0) > 0

    def opened(self, session: str) -> None:
        self._open[session] = self._open.get(session, 0) + 1
        self._notify(session)

    def closed(self, session: str) -> None:
        left = self._open.get(session, 0) - 1
        if left > 0:
            self._open[session] = left
        else:
            self._open.pop(session, None)
        self._notify(session)

    async def wait_for_reader(self, session: str, timeout: float) -> bool:
        """True once ``session`` has an answer stream open; False after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._wait(session, reading=True)
        except TimeoutError:
            return False
        return True

    async def wait_until_gone(self, session: str) -> None:
        """Returns when ``session`` has no answer stream open."""
        await self._wait(session, reading=False)

    async def _wait(self, session: str, *, reading: bool) -> None:
        event = asyncio.Event()
        watchers = self._watchers.setdefault(session, set())
        watchers.add(event)
        try:
            while self.reading(session) != reading:
                await event.wait()
                event.clear()
        finally:
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(session, None)

    def _notify(self, session: str) -> None:
        for event in self._watchers.get(session, ()):
            event.set()


class PageGuard:
    """Pure ASGI: passes the app's own routes (``app_paths``) and the API's prefixes through,
    the page's routes (:data:`PAGE_ROUTES`) too, and answers 404 for everything else."""

    def __init__(
        self,
        app: ASGIApp,
        app_paths: Iterable[re.Pattern[str]],
        readers: Readers,
        events: Callable[[], Mapping[int, int]],
        api_prefixes: tuple[str, ...] = ("/v1/", "/admin/"),
        known_session: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.app = app
        self.app_paths = tuple(app_paths)
        self.readers = readers
        self.events = events  # the page's events: fn_index → how many input values it takes
        self.api_prefixes = api_prefixes
        self.known_session = known_session  # has Gradio's queue messages for this session?

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(self.api_prefixes) or any(p.fullmatch(path) for p in self.app_paths):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        if not page_route_allowed(method, path):
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
            return
        if method == "POST":
            await self._checked_json(scope, receive, send)
            return
        if path != QUEUE_DATA:
            await self.app(scope, receive, send)
            return
        session = _session_hash(scope)
        if session is None:
            await self.app(scope, receive, send)
            return
        if not self.known_session(session):
            # Gradio finds this out inside an answer it has already started: a 200 cut short,
            # and tracebacks in the log for every such GET.
            await JSONResponse({"detail": "No such session."}, 404)(scope, receive, send)
            return
        await self._reading(session, scope, receive, send)

    def _acceptable_join(self, data: Any) -> bool:
        """What Gradio's queue takes unchecked (a 500 otherwise): the event's number must be one
        of the page's, and the session a non-empty string (an empty one is lost in the queue).
        Fewer input values than the event takes: Gradio runs it anyway, fails in it and prints
        a traceback."""
        if not isinstance(data, dict):
            return True  # Gradio's own validation answers this one
        fn_index = data.get("fn_index")
        if fn_index is not None:
            events = self.events()
            if not (type(fn_index) is int and fn_index in events):
                return False
            values = data.get("data")
            if isinstance(values, list) and len(values) < events[fn_index]:
                return False
        session = data.get("session_hash")
        return session is None or (isinstance(session, str) and session != "")

    async def _checked_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The page's POSTs carry small JSON (the body limit layer outside bounds them): it is
        read here and held to the API's JSON rules (no NaN, valid UTF-8, nesting within
        1,024), since Gradio answers some of what it cannot encode back with a 500."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # gone before the body was sent
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            response = JSONResponse({"detail": f"Request body is not valid JSON: {exc}"}, 400)
            await response(scope, receive, send)
            return
        if scope.get("path") == QUEUE_JOIN and not self._acceptable_join(data):
            await JSONResponse({"detail": "No such event or session."}, 400)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reading(self, session: str, scope: Scope, receive: Receive, send: Send) -> None:
        readers = self.readers
        readers.opened(session)
        gone = False

        def leave() -> None:
            nonlocal gone
            if not gone:
                gone = True
                readers.closed(session)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                leave()  # at once, not when the app notices
            return message

        try:
            await self.app(scope, watched_receive, send)
        finally:
            leave()


def _session_hash(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query).get("session_hash")
    return values[0] if values else None
