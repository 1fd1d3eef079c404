"""Who may talk to the edge: loopback by default; anything else only with CurveZMQ keys.

A key folder made by :func:`make_keys` holds ``server.key`` / ``server.key_secret`` (the edge) and
``client.key`` / ``client.key_secret`` (detectors, viewers); the edge accepts only clients whose public key
is in the folder's ``authorized/`` subfolder (``client.key`` is put there). Copy ``server.key``,
``client.key`` and ``client.key_secret`` to the detector machine; the server's secret never leaves the edge.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_authenticators: dict[int, ThreadAuthenticator] = {}


def is_local(endpoint: str) -> bool:
    """True for ``inproc://``, ``ipc://`` and TCP endpoints on a loopback address."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = urlparse(endpoint).hostname or ""
    return host in LOOPBACK or host.startswith("127.")


def make_keys(folder: str | Path) -> Path:
    """Create a server and a client key pair in ``folder`` and authorize the client; returns the folder."""
    folder = Path(folder)
    (folder / "authorized").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(folder, "server")
    client_public, _ = zmq.auth.create_certificates(folder, "client")
    shutil.copy(client_public, folder / "authorized" / "client.key")
    return folder


def _load(folder: Path, name: str) -> tuple[bytes, bytes | None]:
    path = folder / f"{name}.key_secret"
    if not path.exists():
        path = folder / f"{name}.key"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {name}.key or {name}.key_secret (make them with `edgeray keys`)")
    return zmq.auth.load_certificate(path)


def server_socket_options(socket: zmq.Socket, endpoint: str, keys: str | Path | None) -> None:
    """Make ``socket`` a CurveZMQ server when ``keys`` is given; refuse a non-loopback endpoint without keys."""
    if keys is None:
        if not is_local(endpoint):
            raise ValueError(
                f"{endpoint} is reachable from other machines: give CurveZMQ keys (--curve-keys DIR, made by "
                "`edgeray keys DIR`) or bind to 127.0.0.1"
            )
        return
    folder = Path(keys)
    public, secret = _load(folder, "server")
    if secret is None:
        raise ValueError(f"{folder}: server.key_secret is missing; the edge needs its secret key")
    context = socket.context
    if id(context) not in _authenticators:
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(folder / "authorized"))
        _authenticators[id(context)] = authenticator
    socket.curve_secretkey, socket.curve_publickey = secret, public
    socket.curve_server = True


def bind_server_socket(
    context: zmq.Context, kind: int, endpoint: str, keys: str | Path | None, max_message_bytes: int | None = None
) -> tuple[zmq.Socket, str]:
    """A server socket of ``kind`` (``zmq.PULL`` for frames: an unlimited receive queue, nothing dropped;
    ``zmq.PUB`` for the live view: the newest messages only) bound to ``endpoint`` (port 0: any free port), a
    CurveZMQ server when ``keys`` is given (required off loopback). A peer that sends a message part over
    ``max_message_bytes`` is disconnected by ZeroMQ (None: no limit). Returns the socket and the endpoint it bound."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if max_message_bytes is not None:
        socket.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    if kind == zmq.PULL:
        socket.setsockopt(zmq.RCVHWM, 0)  # never drop: the queue in front of us is memory
    elif kind == zmq.PUB:
        socket.setsockopt(zmq.SNDHWM, 4)
    try:
        server_socket_options(socket, endpoint, keys)
        socket.bind(endpoint)  # "tcp://host:0" binds a free port, as LAST_ENDPOINT tells
    except Exception:
        socket.close(0)
        raise
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


def client_socket_options(socket: zmq.Socket, endpoint: str, keys: str | Path | None) -> None:
    """Give a detector's or viewer's ``socket`` the client keys and the server's public key, when ``keys``."""
    if keys is None:
        return
    folder = Path(keys)
    server_public, _ = _load(folder, "server")
    public, secret = _load(folder, "client")
    if secret is None:
        raise ValueError(f"{folder}: client.key_secret is missing")
    socket.curve_secretkey, socket.curve_publickey, socket.curve_serverkey = secret, public, server_public
