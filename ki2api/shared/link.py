"""One replica's line to Redis: the client, a deadline on every call, and whether Redis answers.

Every part that shares state calls Redis through :meth:`RedisLink.call`. While Redis answers,
that is one round trip bounded by ``REDIS_TIMEOUT``; the first call that fails (refused, reset,
too slow) marks the link down and raises :class:`SharedUnavailable`, and from then on calls
fail at once, without touching the network, so each part serves from its local state and no
request waits on a dead Redis. One background task (started by :meth:`RedisLink.start`) pings
every second: it notices a Redis that went away while nobody called, and when Redis answers
again it resubscribes and runs the parts' reconcile hooks (push what changed locally, pull
what changed elsewhere) as the link comes back. Each change is logged once, not per request.

Events between replicas go over one pub/sub channel (``<prefix>:events``) as ``<topic> <label>``
(``tok``: an account's tokens were written, ``state``: its state); handlers run on the
listener task and never see a secret (they read the record themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("ki2api.shared")
T = TypeVar("T")

PING_EVERY = 1.0  # seconds between the monitor's pings (and slot lease renewals)
REPLICA_TTL = 10.0  # a replica not heard of for this long is gone (its slots expire too)


class SharedUnavailable(Exception):
    """Redis did not answer (or the link is down): use local state."""


Hook = Callable[[], Awaitable[None]]
Handler = Callable[[str], Awaitable[None]]


def masked_url(url: str) -> str:
    """The URL without its password, for logs and the page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def new_replica_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        prefix: str = "ki2api",
        replica: str | None = None,
        ping_every: float = PING_EVERY,
        replica_ttl: float = REPLICA_TTL,
    ) -> None:
        self.url = url
        self.ping_every = ping_every
        self.replica_ttl = replica_ttl  # heard of this long ago: gone (tests shorten it)
        self.timeout = timeout
        self.prefix = prefix
        self.replica = replica or new_replica_id()
        self.channel = f"{prefix}:events"
        # No retries: a failed call falls back to local state at once (the monitor reconnects).
        options: dict[str, Any] = dict(
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        # The listener waits for events as long as they take: no read deadline on its socket.
        self._events: aioredis.Redis = aioredis.Redis.from_url(
            url, **{**options, "socket_timeout": None}
        )
        self.up = False
        self.down_since: datetime | None = None  # wall time the link went down, while down
        self.problem: str | None = None  # why, while down
        self.replicas = 1  # replicas seen alive at the last ping (this one included)
        self._reconcile: list[Hook] = []
        self._tick: list[Hook] = []
        self._handlers: dict[str, Handler] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- calls ---------------------------------------------------------------------------------

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """``fn(client)`` on a live link; :class:`SharedUnavailable` otherwise. The client's
        socket timeouts bound it (``REDIS_TIMEOUT``); no second timer on the request path."""
        if not self.up:
            raise SharedUnavailable(self.problem or "Redis is not connected")
        try:
            return await fn(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.lost(exc)
            raise SharedUnavailable(str(exc) or type(exc).__name__) from None

    def lost(self, exc: BaseException) -> None:
        """Mark the link down (logged once per outage)."""
        if not self.up and self.down_since is not None:
            return
        self.up = False
        self.down_since = datetime.now(UTC)
        self.problem = _describe(exc)
        log.warning(
            "Redis at %s is unreachable (%s): this replica serves from its own state until it "
            "returns; limits and cooldowns are per replica meanwhile",
            masked_url(self.url),
            self.problem,
        )

    # --- hooks ---------------------------------------------------------------------------------

    def on_reconnect(self, hook: Hook) -> None:
        """Run ``hook`` each time Redis (re)appears (at start too), as the link comes back."""
        self._reconcile.append(hook)

    def on_tick(self, hook: Hook) -> None:
        """Run ``hook`` on every monitor tick while up (lease renewals, batched writes)."""
        self._tick.append(hook)

    def on_event(self, topic: str, handler: Handler) -> None:
        """``handler(label)`` for each ``<topic> <label>`` event another replica (or this one)
        published."""
        self._handlers[topic] = handler

    def changed(self, topic: str, label: str) -> asyncio.Event:
        """An event set when ``<topic> <label>`` is next published (pub/sub, while up)."""
        name = f"{topic} {label}"
        event = self._waiters.get(name)
        if event is None or event.is_set():
            event = self._waiters[name] = asyncio.Event()
        return event

    # --- the monitor ---------------------------------------------------------------------------

    async def start(self) -> bool:
        """Connect once (reconciling), then keep watching in the background; True if up."""
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._monitor(), name="redis monitor")
        return self.up

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.timeout * 4)):
                await self.client.ping()
                await self._heartbeat(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            if self.down_since is None:
                self.lost(exc)
            return
        was_down = self.down_since is not None
        await self._listen()
        self.up = True  # the hooks call through the link
        try:
            for hook in self._reconcile:
                await hook()
        except SharedUnavailable:
            return  # lost again while reconciling: the next tick tries again
        except Exception:  # a bug in a hook must not take the monitor down
            log.exception("reconciling with Redis failed")
        if was_down:
            log.warning(
                "Redis at %s is back (down since %s): shared state reconciled",
                masked_url(self.url),
                self.down_since.strftime("%H:%M:%SZ") if self.down_since else "?",
            )
        else:
            log.info("shared state in Redis at %s", masked_url(self.url))
        self.down_since, self.problem = None, None

    async def _listen(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        pubsub = self._events.pubsub()
        try:
            await pubsub.subscribe(self.channel)
        except (RedisError, OSError) as exc:
            await pubsub.aclose()
            self.lost(exc)
            return
        self._listener = asyncio.get_running_loop().create_task(
            self._read_events(pubsub), name="redis events"
        )

    async def _read_events(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                topic, _, label = text.partition(" ")
                event = self._waiters.pop(text, None)
                if event is not None:
                    event.set()
                handler = self._handlers.get(topic)
                if handler is not None:
                    try:
                        await handler(label)
                    except SharedUnavailable:
                        pass
                    except Exception:
                        log.exception("handling the shared event %r failed", text)
        except (RedisError, OSError) as exc:
            self.lost(exc)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(1.0, self.timeout * 4)):
                    await pubsub.aclose()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.ping_every)
            if not self.up:
                await self._connect()
                continue
            try:
                await self.call(self._heartbeat)
                for hook in self._tick:
                    await hook()
            except SharedUnavailable:
                continue
            except Exception:
                log.exception("a shared-state tick failed")
            if self._listener is not None and self._listener.done() and self.up:
                self.lost(ConnectionError("the event subscription ended"))

    async def _heartbeat(self, client: aioredis.Redis) -> None:
        now = time.time()
        key = self.key("replicas")
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.replica: now + self.replica_ttl})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            results = await pipe.execute()
        self.replicas = int(results[-1])

    async def publish(self, topic: str, label: str) -> None:
        await self.call(lambda c: c.publish(self.channel, f"{topic} {label}"))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Every step is bounded: a Redis that stalls must not hold the app's shutdown.
        bound = max(1.0, self.timeout * 4)
        tasks = [task for task in (self._task, self._listener) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=bound)
        if self.up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self.client.zrem(self.key("replicas"), self.replica)
        self.up = False
        for client in (self.client, self._events):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(bound):
                    await client.aclose()

    def status(self) -> dict[str, object]:
        """For /health and the page: connected or not, since when, why; never the password."""
        return {
            "backend": "redis",
            "connected": self.up,
            "down_since": self.down_since.isoformat() if self.down_since else None,
            "problem": self.problem,
            "replicas": self.replicas if self.up else None,
        }


def as_bytes(raw: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """A hash as redis-py returns it (bytes; typed as either) with bytes keys and values."""
    return {
        (k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else v.encode())
        for k, v in raw.items()
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


def probe(url: str, timeout: float = 2.0) -> str | None:
    """Why Redis at ``url`` cannot be used now (one sentence), or None if it answers a PING.
    Blocking: for start-up, before the event loop runs."""
    import redis as syncredis

    try:
        client = syncredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None
        )
    except ValueError as exc:
        return f"REDIS_URL is not a Redis URL ({exc})"
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        return _describe(exc)
    finally:
        client.close()
    return None
