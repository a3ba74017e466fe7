"""Behavioural suite over real sockets; runs once per worker model (see conftest)."""

from __future__ import annotations

from conftest import H11Client, Server, request


def test_root_serves_index_html(server: Server) -> None:
    response = request(server, "GET", "/")
    assert response.status == 200
    assert response.body == (server.root / "index.html").read_bytes()
    assert response.header("content-type") == "text/html; charset=utf-8"


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    with server.connect() as sock:
        client = H11Client(sock)
        for _ in range(5):
            assert client.request("GET", "/small.txt").status == 200
