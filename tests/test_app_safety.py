"""The app under faults, over real HTTP: a slow or broken endpoint behind it (a real local HTTP
server that stalls, answers 500 or plain text, or is not there), oversized uploads refused
before they are read, a Host header from elsewhere (DNS rebinding), WebP examples."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import requests
import uvicorn
from conftest import free_port, photo_bytes

from landmark.config import AppConfig
from landmark.runtime import app as web_app


class Endpoint(http.server.ThreadingHTTPServer):
    """A stand-in `/invocations` that misbehaves on demand: `mode` is "stall" (until
    `release` is set), "500", "text-400" or "ok"."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EndpointHandler)
        self.mode, self.release, self.waiting = "ok", threading.Event(), threading.Event()

    def handle_error(self, request, client_address) -> None:
        pass  # the app gave up waiting (the timeout case): nothing to report

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/invocations"


class EndpointHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        mode = self.server.mode
        if mode == "stall":
            self.server.waiting.set()
            self.server.release.wait(30)
        status, body, kind = {
            "500": (500, b"<html>Internal Server Error</html>", "text/html"),
            "text-400": (400, b"bad request, says the proxy", "text/plain"),
        }.get(mode, (200, json.dumps({"predictions": [ANSWER]}).encode(), "application/json"))
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


ANSWER = {"label": "00.Eiffel_Tower", "name": "Eiffel Tower", "probability": 0.9, "known": True,
          "novelty": 0.1, "location": None, "top_k": []}  # fmt: skip


@pytest.fixture
def endpoint():
    server = Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()


def serve(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # 30 s
        if server.started:
            return f"http://127.0.0.1:{port}", server, thread
        threading.Event().wait(0.05)
    raise TimeoutError("the app did not start")


@pytest.fixture
def app_for(tmp_path):
    servers = []

    def start(classifier, examples=(), cfg=AppConfig()):
        url, server, thread = serve(web_app.create_app(classifier, list(examples), cfg))
        servers.append((server, thread))
        return url

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def test_a_slow_endpoint_does_not_freeze_the_page(endpoint, app_for):
    """The endpoint call runs in a worker thread: while one photo waits, the page answers
    (before, the blocking call sat in the event loop and every other request waited)."""
    url = app_for(web_app.EndpointClassifier(endpoint.url))
    endpoint.mode = "stall"
    result = {}
    waiting = threading.Thread(target=lambda: result.update(r=requests.post(
        f"{url}/api/predict", data=photo_bytes(), timeout=60)))  # fmt: skip
    waiting.start()
    assert endpoint.waiting.wait(30)
    assert requests.get(f"{url}/api/info", timeout=10).status_code == 200  # while it stalls
    assert requests.get(f"{url}/", timeout=10).status_code == 200
    endpoint.release.set()
    waiting.join(30)
    assert result["r"].status_code == 200 and result["r"].json()["label"] == ANSWER["label"]


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("500", 502, "answered 500"),
        ("text-400", 400, "bad request, says the proxy"),
        ("stall", 504, "gave no answer within 1 s"),
        ("gone", 502, "cannot reach"),
    ],
)
def test_endpoint_failures_become_clear_json_errors(endpoint, app_for, mode, status, words):
    target = endpoint.url if mode != "gone" else f"http://127.0.0.1:{free_port()}/invocations"
    url = app_for(web_app.EndpointClassifier(target, timeout=1))
    endpoint.mode = mode
    response = requests.post(
        f"{url}/api/predict", data=photo_bytes(), headers={"x-filename": "a.jpg"}, timeout=60
    )
    endpoint.release.set()
    assert response.status_code == status
    error = response.json()["error"]  # JSON, never a plain-text 500
    assert error.startswith("a.jpg: ") and words in error and "Traceback" not in error


def test_an_oversized_upload_is_refused_before_its_body_is_read(endpoint, app_for):
    url = app_for(web_app.EndpointClassifier(endpoint.url), cfg=AppConfig(max_upload_mb=1))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"x-filename: huge.jpg\r\nContent-Length: 60000000\r\n\r\n")  # fmt: skip
        reply, chunk = b"", b"-"
        while b"}" not in reply and chunk:  # answered with no byte of the body sent
            chunk = conn.recv(4096)
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "huge.jpg is larger than 1 MB" in reply
    chunked = requests.post(f"{url}/api/predict", data=iter([b"\xff" * 600_000] * 3), timeout=30)
    assert chunked.status_code == 413  # no Content-Length: stopped once over the limit


def test_requests_naming_another_host_are_refused(endpoint, app_for):
    """DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 sends
    `Host: evil.example`; only the names the app is reached by are answered."""
    url = app_for(web_app.EndpointClassifier(endpoint.url),
                  cfg=AppConfig(allowed_hosts="photos.lan"))  # fmt: skip
    assert requests.get(f"{url}/api/info", timeout=10).status_code == 200
    assert requests.get(f"{url}/api/info", headers={"Host": "photos.lan"}, timeout=10).ok
    refused = requests.get(f"{url}/api/info", headers={"Host": "evil.example:80"}, timeout=10)
    assert refused.status_code == 400
    assert "--allowed-hosts evil.example" in refused.json()["error"]
    assert web_app.allowed_hosts(AppConfig(host="0.0.0.0")) == list(web_app.LOCAL_HOSTS)


def test_webp_examples_are_served_as_webp(endpoint, app_for, tmp_path):
    example = tmp_path / "test" / "00.Eiffel_Tower" / "a.webp"
    example.parent.mkdir(parents=True)
    example.write_bytes(photo_bytes(fmt="WEBP"))
    url = app_for(web_app.EndpointClassifier(endpoint.url), examples=[Path(example)])
    response = requests.get(f"{url}/api/examples/0", timeout=10)
    assert response.headers["content-type"] == "image/webp"
    assert response.content == example.read_bytes()
