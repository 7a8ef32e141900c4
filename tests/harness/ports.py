"""Free TCP ports on the loopback interface for servers the harness starts."""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"

# Ports handed out by this process. The kernel may give the same ephemeral port to two consecutive
# bind(0) calls once the first socket is closed, so two servers started back to back could otherwise be
# told to listen on the same port.
_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now and this process has not handed out.

    The port is found by binding to port 0 and closing the socket again, so another process could still
    take it before the server binds; servers started with it fail fast in that case and the harness
    reports their log.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port found on {host} after 64 attempts")


def is_listening(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return True when a TCP connect to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
