"""A Ray cluster's address, checked before Ray is asked to join it.

ray.init(address=...) retries an unreachable head for minutes, and a port
that accepts TCP but is not Ray keeps it waiting in C++, where neither
Ctrl-C nor SIGTERM reach it. So the address is checked here first, in
Python and with timeouts: its form, a TCP connection, and that the port
speaks HTTP/2 as Ray's GCS (a gRPC server) does: it answers the HTTP/2
client preface with a SETTINGS frame.
"""
from __future__ import annotations

import os
import re
import socket

from converter.errors import ConverterError

_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"   # length 0, type SETTINGS, no flags, stream 0


def parse(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT (an IPv6 host in brackets), or a ConverterError."""
    shown = repr(address[:80]) + ("..." if len(address) > 80 else "")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            host = ""
    elif not _HOST.match(host):
        host = ""
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConverterError(f"--ray-address {shown}: expected HOST:PORT")
    return host, int(port)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    host, port = parse(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_PREFACE + _EMPTY_SETTINGS)
            head = sock.recv(9)
    except socket.timeout:
        raise ConverterError(f"{address} accepts connections but does not answer as a Ray cluster "
                             f"(no HTTP/2 reply within {timeout:g} s)") from None
    except (OSError, UnicodeError) as exc:
        raise ConverterError(f"cannot reach the Ray cluster at {address}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if len(head) < 9 or head[3] != 0x04:
        raise ConverterError(f"{address} is not a Ray cluster (it does not speak HTTP/2, as Ray's GCS does)")


def enable_token_auth() -> None:
    """`ray start` turns token auth on when it finds a token; a driver
    joining by address does not, and is then refused: do as ray start does."""
    if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(os.path.expanduser("~/.ray/auth_token"))):
        os.environ["RAY_AUTH_MODE"] = "token"
