"""Run an ASGI app on a real uvicorn server on loopback (port 0) in a background thread.

In-process ASGI transports buffer whole responses; streaming, timeouts and disconnects are only
tested honestly over a real socket.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from ki2api.server.run import http_protocol


class ServerThread:
    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        *,
        http: Any = None,
        uvloop: bool = False,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        """``uvloop``: run on uvloop, as production does (its timers keep a coarser time);
        ``ssl_certfile`` / ``ssl_keyfile``: serve HTTPS."""
        self.scheme = "https" if ssl_certfile else "http"
        config = uvicorn.Config(
            app,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            host=host,
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            http=http or http_protocol(),  # as ki2api.server.run.serve runs it
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, daemon=True, name="uvicorn-test")
        self.host = host
        self.port = 0
        self._uvloop = uvloop

    def _run(self) -> None:
        if self._uvloop:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self.server.serve())
            return
        asyncio.run(self.server.serve())

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        sockets = self.server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
