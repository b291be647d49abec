"""TLS on loopback for tests: a CA the test run makes (trustme) and certificates it signs.

tls = TlsFiles.make(folder)                      # a certificate for 127.0.0.1 and localhost
SimulatorServer(ssl_certfile=tls.cert, ssl_keyfile=tls.key)
Settings.from_env({..., "KIRO_CA_BUNDLE": tls.ca})
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    ca: str  # the CA's certificate (PEM): what KIRO_CA_BUNDLE names
    cert: str  # the server's certificate chain (PEM)
    key: str  # the server's private key (PEM)
    authority: trustme.CA

    @classmethod
    def make(cls, folder: Path, hosts: tuple[str, ...] = LOOPBACK) -> TlsFiles:
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        issued = ca.issue_cert(*hosts)
        paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
        ca.cert_pem.write_to_path(str(paths["ca"]))
        issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
        for extra in issued.cert_chain_pems[1:]:
            extra.write_to_path(str(paths["cert"]), append=True)
        issued.private_key_pem.write_to_path(str(paths["key"]))
        return cls(str(paths["ca"]), str(paths["cert"]), str(paths["key"]), ca)

    def reissue(self, folder: Path, *hosts: str) -> TlsFiles:
        """A certificate from the same CA for other host names (a wrong-host server)."""
        issued = self.authority.issue_cert(*hosts)
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "cert.pem", folder / "key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return TlsFiles(self.ca, str(cert), str(key), self.authority)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def raw_tls_server(
    tls: TlsFiles, answer: Callable[[bytes], bytes], connections: int
) -> tuple[int, threading.Thread]:
    """Serves ``connections`` connections over TLS, one request each: reads the request, sends
    ``answer(request)`` and closes (without saying so in a header)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    ctx = tls.server_context()

    def run() -> None:
        with sock:
            for _ in range(connections):
                raw, _ = sock.accept()
                try:
                    with ctx.wrap_socket(raw, server_side=True) as conn:
                        request = conn.recv(65536)
                        conn.sendall(answer(request))
                except (ssl.SSLError, OSError):
                    continue  # a client that refused the certificate

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread
