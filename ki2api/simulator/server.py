"""``SimulatorServer``: the simulator on a real uvicorn server, in a background thread.

::

    with SimulatorServer() as sim:
        httpx.post(f"{sim.url}/generateAssistantResponse", ...)
        sim.state.enqueue(text_answer("hi"))

With ``ssl_certfile`` and ``ssl_keyfile`` (PEM files) it speaks HTTPS, as Kiro does, and
``sim.url`` starts with ``https://``. The socket is bound before the thread starts (port 0
picks a free port), so ``sim.url`` is known at once and the server accepts connections when
``start()`` returns. ``stop()`` first ends every answer still playing (stalled ones included),
then stops uvicorn, so it never hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ki2api.simulator.app import create_simulator_app
from ki2api.simulator.player import TRANSPORT_SCOPE_KEY, LiveStreams
from ki2api.simulator.state import SimulatorState

_START_TIMEOUT = 10.0


class TransportExposingProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, plus the connection's transport in each request's scope, so
    the simulator can drop a connection the way a failing network does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner: ASGIApp = self.app  # type: ignore[has-type]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scope[TRANSPORT_SCOPE_KEY] = self.transport
            await inner(scope, receive, send)

        self.app = app


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_config(
    app: ASGIApp,
    *,
    log_level: str = "warning",
    own_logging: bool = True,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> uvicorn.Config:
    """``own_logging=False`` (a simulator inside another program) leaves the logging set-up
    alone: uvicorn's would set its shared loggers to ``log_level`` for the host's server too."""
    return uvicorn.Config(
        app,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        http=TransportExposingProtocol,
        lifespan="off",
        log_level=log_level if own_logging else None,
        log_config=LOGGING_CONFIG if own_logging else None,
        access_log=False,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )


_THREAD_LEVELS: dict[str, int] = {}  # simulator thread name -> lowest level it logs


class _SimulatorThreadFilter(logging.Filter):
    """Keeps an embedded simulator's uvicorn lines below its level ("Uvicorn running on ..."
    a port nobody should open) out of the shared uvicorn loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= _THREAD_LEVELS.get(record.threadName or "", 0)


_THREAD_FILTER = _SimulatorThreadFilter()
_thread_count = itertools.count(1)


def url_for(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class SimulatorServer:
    """A running simulator. Use as a (sync or async) context manager, or ``start()``/``stop()``."""

    def __init__(
        self,
        state: SimulatorState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.state = state if state is not None else SimulatorState()
        self._certfile, self._keyfile = ssl_certfile, ssl_keyfile
        self.host = host
        self.port = port
        self.app = create_simulator_app(self.state)
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def bind(self) -> SimulatorServer:
        """Take the port now (``url`` is then known) and serve it from :meth:`start`."""
        if self._socket is None:
            self._socket = bind_socket(self.host, self.port)
            self.port = self._socket.getsockname()[1]
            self.url = url_for(self._socket, "https" if self._certfile else "http")
            # A simulator bound but never started or stopped must not leak its socket.
            weakref.finalize(self, self._socket.close)
        return self

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self.bind()
        assert self._socket is not None
        config = make_config(
            self.app, own_logging=False, ssl_certfile=self._certfile, ssl_keyfile=self._keyfile
        )
        self._server = uvicorn.Server(config)
        sock, server = self._socket, self._server
        name = f"kiro-simulator-{next(_thread_count)}"
        _THREAD_LEVELS[name] = logging.getLevelName(self._log_level.upper())
        for logger in ("uvicorn.error", "uvicorn"):
            logging.getLogger(logger).addFilter(_THREAD_FILTER)  # once: filters are a set
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulator did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End every answer being played, stop uvicorn and join its thread."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            live: LiveStreams = self.app.state.live_streams
            live.close_all()
            self.state.wait_idle(timeout=min(timeout, 2.0))
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                logging.getLogger(__name__).warning("simulator did not stop in time; forcing")
                server.force_exit = True
                thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        if thread is not None:
            _THREAD_LEVELS.pop(thread.name, None)
        self._server = self._thread = self._socket = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimulatorServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
