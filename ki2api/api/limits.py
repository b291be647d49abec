"""The API's own limits: a per-key rate limit (``RATE_LIMIT``) and CORS origins (``CORS_ORIGINS``).

The body size limit lives in :func:`ki2api.api.common.read_json_body`, the message count in
``Gateway.open`` and the per-account concurrency in :mod:`ki2api.pipeline.concurrency`.

``RATE_LIMIT=60/minute`` gives each API key a token bucket of 60 requests refilled over a
minute; a request with an empty bucket gets 429 ``rate_limit_error`` with ``Retry-After`` in the
client's format (Anthropic's for ``/v1/messages``, OpenAI's elsewhere). Here it counts
``API_KEY``'s requests (a wrong key is refused by the auth check anyway, and counting arbitrary
keys would let anyone grow the table). Client keys (:mod:`ki2api.teams`) have their own RPM,
which is ``RATE_LIMIT`` when they set none, counted where their other limits are
(``Gateway.open``), with the same bucket arithmetic (:func:`ki2api.store.counters.take_one`).

With replicas sharing state (``REDIS_URL``) the buckets live in Redis (``shared``, a
:class:`~ki2api.shared.counters.Counters`), so a key gets its rate once, not once per replica.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ki2api.api.auth import keys_match, presented_key
from ki2api.api.errors import anthropic_error_response, openai_error_response
from ki2api.model.errors import RateLimited
from ki2api.settings import Rate, Settings, parse_rate
from ki2api.shared.counters import Counters
from ki2api.store.counters import take_one

_MAX_TRACKED_KEYS = 1024


class RateLimiter:
    """Token buckets by key; ``take(key)`` returns 0 when a request may go, else the seconds
    until it may. Sans I/O: the clock is injectable."""

    def __init__(
        self,
        rate: Rate,
        clock: Callable[[], float] = time.monotonic,
        shared: Counters | None = None,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self.shared = shared  # the replicas' buckets, when they share state
        # key → (tokens, last update); least recently seen first, bounded.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        now = self._clock()
        capacity = float(self.rate.requests)
        tokens, updated = self._buckets.pop(key, (capacity, now))
        tokens, wait = take_one(tokens, updated, now, capacity, self.rate.per_second)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > _MAX_TRACKED_KEYS:
            self._buckets.popitem(last=False)
        return wait

    async def acquire(self, key: str) -> float:
        """:meth:`take`, from the replicas' shared bucket when there is one."""
        if self.shared is None:
            return self.take(key)
        return await self.shared.take(f"rate:{key}", self.rate.requests, self.rate.per_second)


def _is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


class RateLimitMiddleware:
    """Counts API requests (``/v1/...``) per valid key and answers 429 past the rate."""

    def __init__(self, app: ASGIApp, settings: Settings, limiter: RateLimiter) -> None:
        self.app = app
        self.settings = settings
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/v1/") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = presented_key(Request(scope))
        if key is None or not keys_match(key, self.settings.api_key):
            await self.app(scope, receive, send)
            return
        wait = await self.limiter.acquire(key_digest(key))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        error = RateLimited(
            f"Rate limit of {self.settings.rate_limit} per API key reached; retry in {wait:.1f} s.",
            retry_after=wait,
        )
        render = anthropic_error_response if _is_anthropic(path) else openai_error_response
        await render(error)(scope, receive, send)


def rate_limiter(settings: Settings, shared: Counters | None = None) -> RateLimiter | None:
    """The app's one limiter (``RATE_LIMIT``), or None. The page's chats take from the same
    buckets as the API's (:mod:`ki2api.ui.access`); ``shared``: the replicas' buckets."""
    if not settings.rate_limit:
        return None
    return RateLimiter(parse_rate(settings.rate_limit), shared=shared)


def key_digest(key: str) -> str:
    """A bucket's name: no key sits in memory longer than the request needs."""
    return hashlib.sha256(key.encode()).hexdigest()


def limits_middleware(settings: Settings, limiter: RateLimiter | None = None) -> list[Middleware]:
    """The rate limit and CORS middleware the settings ask for (none by default), outermost
    first: CORS wraps the rate limit, so preflights and 429s alike carry the CORS headers.
    ``limiter``: the app's (:func:`rate_limiter`), shared with the page."""
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["x-request-id", "retry-after", "retry-after-ms", "x-should-retry"],
                max_age=600,
            )
        )
    if settings.rate_limit:
        limiter = limiter or RateLimiter(parse_rate(settings.rate_limit))
        middleware.append(Middleware(RateLimitMiddleware, settings=settings, limiter=limiter))
    return middleware
