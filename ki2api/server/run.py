"""Serve the app with uvicorn: ``python app.py`` and ``ki2api serve`` both end here."""

from __future__ import annotations

import argparse
import errno
import gc
import importlib.util
import logging
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import uvicorn

from ki2api.settings import Settings, SettingsError

log = logging.getLogger("ki2api")


def settings_or_exit(environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
    """The settings from the environment; bad values end the process before anything starts,
    each on one line (``error: PORT must be ...``), with exit code 2 (a usage error)."""
    try:
        return Settings.from_env(environ, **overrides)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One INFO line per upstream call repeats the access log; keep httpx for warnings.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def fast_paths() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn's "auto" picks: uvloop and httptools come with
    ``uvicorn[standard]``; without them it falls back to asyncio and h11 (slower, same output)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def http_protocol(header_timeout: float | None = None) -> Any:
    """What ``uvicorn.run(http=...)`` gets: uvicorn's httptools protocol, or h11 when httptools
    is not installed; either closes a connection whose request head is not complete within
    ``header_timeout`` seconds (:mod:`ki2api.server.protocol`)."""
    from ki2api.server.protocol import (
        H11HeadDeadlineProtocol,
        HeadDeadline,
        HttpToolsHeadDeadlineProtocol,
        with_header_timeout,
    )

    protocol: type[HeadDeadline] = HttpToolsHeadDeadlineProtocol
    if importlib.util.find_spec("httptools") is None:
        protocol = H11HeadDeadlineProtocol
    return protocol if header_timeout is None else with_header_timeout(protocol, header_timeout)


class PortUnavailable(Exception):
    """The address cannot be listened on; the message says why and what to do, in one line."""


def check_port(host: str, port: int) -> None:
    """Bind once and let go, before minutes of start-up end in uvicorn's bind error (which
    comes after the app has started, between lines saying it runs)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE or getattr(exc, "winerror", None) == 10048
        why = "the port is in use (is Ki2API already running?)" if in_use else exc.strerror
        hint = f"pick another port with --port {port + 1} or PORT={port + 1}"
        raise PortUnavailable(f"cannot listen on {host}:{port}: {why}; {hint}") from None


class RedisUnavailable(Exception):
    """``REDIS_URL`` is set and Redis does not answer; the message says what to do, in one line."""


def check_redis(settings: Settings) -> None:
    """With ``REDIS_URL``: Redis must answer before the replica serves (or, with
    ``REDIS_OPTIONAL=1``, a warning and local state until it does)."""
    if not settings.redis_url:
        return
    from ki2api.shared import masked_url, probe

    problem = probe(settings.redis_url, timeout=max(1.0, settings.redis_timeout * 8))
    if problem is None:
        return
    where = masked_url(settings.redis_url)
    if settings.redis_optional:
        log.warning(
            "Redis at %s does not answer (%s): starting on this replica's own state "
            "(REDIS_OPTIONAL=1); it joins the shared state when Redis answers",
            where,
            problem,
        )
        return
    raise RedisUnavailable(
        f"cannot reach Redis at {where} ({problem}); start Redis, fix REDIS_URL, or set "
        "REDIS_OPTIONAL=1 to start on local state"
    )


def serve(settings: Settings, *, with_ui: bool = True) -> None:
    from ki2api.app import create_app
    from ki2api.store import StoreError
    from ki2api.teams.gate import check_store

    configure_logging(settings.log_level)
    try:
        check_port(settings.host, settings.port)
    except PortUnavailable as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    try:
        check_store(settings)  # a damaged or newer database: one sentence, exit code 2
        check_redis(settings)
    except (StoreError, RedisUnavailable) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    app = create_app(settings, with_ui=with_ui)
    shown = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    log.info("Ki2API listening on http://%s:%d (API at /v1, UI at /)", shown, settings.port)
    if settings.api_key_is_default:
        if settings.on_space:
            log.warning("no API_KEY secret: the API is switched off until one is set")
        else:
            log.warning(
                "using the well-known default API key; set API_KEY before exposing this server"
            )
    loop, http = fast_paths()
    log.info("event loop: %s, HTTP parser: %s", loop, http)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic GC's full collections, which otherwise pause every answer in flight for ~15 ms
    # per pass over these ~64k objects (measured: longest pause under load 56 -> 29 ms).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        loop="auto",
        http=http_protocol(settings.header_timeout),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ki2api.access logs every API call with more in it (model, TTFT, ...)
        proxy_headers=settings.on_space,
        forwarded_allow_ips="*" if settings.on_space else None,
        timeout_graceful_shutdown=5,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="app.py", description="Run the Ki2API gateway.")
    parser.add_argument("--demo", action="store_true", help="answer from the built-in simulator")
    parser.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: PORT, 7860 on a Space, or 8989)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"demo": True} if args.demo else {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    serve(settings_or_exit(**overrides))
