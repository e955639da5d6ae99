"""Shared integration fixtures: a real S3-protocol server (moto) and a TCP proxy that can fail.

`s3_server` is a moto server on 127.0.0.1 that a test may `stop()` (connections are then
refused) and `start()` again on the same port; moto keeps its state in-process across the
restart, and the next test finds it running again. `s3_bucket` is a fresh bucket as
"s3://<bucket>/prefix". `flaky_proxy` sits between a client and the server and cuts
connections after a byte budget, to simulate an outage mid-upload.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


class S3Server:
    """A moto S3 server with a stable endpoint across stop()/start()."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        """Stop serving and close the listening socket, so new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        inner = server._server  # ThreadedMotoServer.stop() leaves the socket listening
        if inner is not None:
            inner.server_close()

    def client(self) -> S3Client:
        """A plain boto3 client straight to the server (for setup and assertions)."""
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(
    _moto_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> S3Server:
    """A running moto S3 server, with fake credentials and its endpoint in the environment.

    One server serves the whole session (stopping one costs half a second); a test that
    stopped it gets it back, on the same port, at the next test's start.
    """
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    no_files = tmp_path_factory.mktemp("aws") / "absent"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(no_files))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_files))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _moto_server.start()
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", _moto_server.endpoint_url)
    return _moto_server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on `s3_server`, as "s3://<bucket>/prefix"."""
    bucket = f"kompaktor-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix"


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection after N client bytes.

    `cut_after(n, refuse=True)`: once n more bytes have gone upstream, reset all connections
    and (with `refuse`) stop listening, so retries get "connection refused" until `resume()`.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._budget: int | None = None
        self._refuse = True
        self.cuts = 0
        self._listener: socket.socket | None = None
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut_after(self, nbytes: int, *, refuse: bool = True) -> None:
        with self._lock:
            self._budget, self._refuse = nbytes, refuse

    def cut(self) -> None:
        """Reset every connection now and stop listening."""
        with self._lock:
            self._refuse = True
            self._trip()

    def close(self) -> None:
        self.cut()

    def _trip(self) -> None:  # lock held
        self.cuts += 1
        self._budget = None
        if self._refuse and self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close with RST, as a dying server or network would.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        if self._budget is not None:
                            self._budget -= len(data)
                            if self._budget <= 0:
                                self._trip()
                                return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def flaky_proxy(s3_server: S3Server) -> Iterator[FlakyProxy]:
    """A `FlakyProxy` in front of `s3_server`; point a client's endpoint at `.url`."""
    proxy = FlakyProxy(s3_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
