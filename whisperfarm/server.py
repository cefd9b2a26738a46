"""Serving the coordinator with uvicorn from a background thread of the CLI process."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from whisperfarm.errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one). ``::`` listens on IPv6 and,
    where the system allows, IPv4 too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(
            f"can't listen on {host}:{port} ({error.strerror}): choose another --port or --host"
        ) from error
    sock.listen(512)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class BackgroundServer:
    """uvicorn serving ``app`` on an already-bound socket, in a daemon thread."""

    def __init__(self, app: ASGIApp, sock: socket.socket):
        self.sock = sock
        # No proxy headers: nothing here uses the client's address, so there is nothing to
        # trust a forwarder for. httptools and uvloop are picked up when installed.
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name="coordinator"
        )

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
