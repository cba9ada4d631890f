"""Static files in production: deploy/bin/web (collectstatic, then gunicorn) with DEBUG=0 serves the
console's CSS and JavaScript through WhiteNoise; the probes answer over plain HTTP, and a busy
port is one line naming GUNICORN_BIND."""
import secrets
import socket
import subprocess
import time

import httpx
import pytest

from .conftest import BIN, ROOT, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def production_web(stack, tmp_path):
    port = free_port()
    stack.env.update({"DEBUG": "0", "BEHIND_TLS_PROXY": "1", "SECRET_KEY": secrets.token_urlsafe(32),
                      "STATIC_ROOT": str(tmp_path / "static"), "GUNICORN_BIND": f"127.0.0.1:{port}",
                      "WEB_CONCURRENCY": "1", "TOWEROPS_VAR_DIR": str(tmp_path / "var")})
    stack.start("web", [str(BIN / "web")])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        stack.check_running()
        try:
            httpx.get(f"{base}/healthz", timeout=2)
            return base
        except httpx.TransportError:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.3)


def test_gunicorn_with_debug_off_serves_the_collected_static_files(production_web, tmp_path):
    proxied = {"X-Forwarded-Proto": "https"}
    css = httpx.get(f"{production_web}/static/css/console.css", headers=proxied)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.content == (ROOT / "static" / "css" / "console.css").read_bytes()
    assert (tmp_path / "static" / "css" / "console.css.gz").exists()  # compressed by collectstatic
    gz = httpx.get(f"{production_web}/static/css/console.css", headers={**proxied, "Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert httpx.get(f"{production_web}/static/vendor/htmx-2.0.min.js", headers=proxied).status_code == 200
    # Plain HTTP from outside the proxy is sent to HTTPS; the probes are exempt.
    plain = httpx.get(f"{production_web}/static/css/console.css")
    assert plain.status_code == 301 and plain.headers["location"].startswith("https://")
    assert httpx.get(f"{production_web}/healthz").status_code == 200


def test_a_busy_port_is_one_line_naming_the_variable(stack, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**stack.env, "DEBUG": "0", "SECRET_KEY": "x", "STATIC_ROOT": str(tmp_path / "static"),
               "GUNICORN_BIND": f"127.0.0.1:{port}", "LOG_LEVEL": "WARNING"}
        run = subprocess.run([str(BIN / "web")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout + run.stderr == (
        f"towerops web: port {port} on 127.0.0.1 is already in use; set GUNICORN_BIND to another host:port\n")
