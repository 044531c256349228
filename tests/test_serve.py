"""`edge-pneumo serve`: a real uvicorn server on a free port, driven over HTTP (and by a real
headless browser when Debian's chromium and chromedriver are installed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_xray

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, tmp: Path, *args: str, env: dict | None = None):
    port = free_port()
    log = open(tmp / f"serve-{port}.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edge-pneumo"), "serve", "--model", str(model), "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}", tmp / f"serve-{port}.log"
        except OSError:
            if proc.poll() is not None:
                raise AssertionError((tmp / f"serve-{port}.log").read_text())
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def multipart(data: bytes, filename: str = "x.png", field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, data: bytes, token: str | None = TOKEN, filename: str = "x.png", query: str = ""):
    body, ctype = multipart(data, filename)
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{url}/api/v1/classify{query}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


@pytest.fixture(scope="module")
def xray_png(tmp_path_factory) -> bytes:
    ok, buf = cv2.imencode(".png", synthetic_xray(np.random.default_rng(11), 1, 96))
    return buf.tobytes()


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    spool = tmp / "tmpdir"
    spool.mkdir()
    proc, url, log = start_server(
        tiny_export, tmp, "--queue", "1", "--max-upload-mb", "2", env={"EDGE_PNEUMO_TOKEN": TOKEN, "TMPDIR": str(spool)}
    )
    yield url, log, spool
    proc.terminate()
    proc.wait(timeout=10)


def test_health_needs_no_token_and_the_api_does(server, xray_png):
    url, _, _ = server
    with urllib.request.urlopen(f"{url}/healthz") as r:
        assert json.loads(r.read())["status"] == "ok"
    status, body, headers = post(url, xray_png, token=None)
    assert status == 401 and "token" in body["error"] and headers.get("www-authenticate") == "Bearer"
    assert post(url, xray_png, token="wrong-token-wrong-token")[0] == 401
    req = urllib.request.Request(f"{url}/api/v1/info")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 401


def test_classify_returns_an_infer_row(server, xray_png, tiny_export):
    url, _, _ = server
    status, row, _ = post(url, xray_png)
    assert status == 200, row
    from edge_pneumo.device.result import FIELDS

    assert set(FIELDS) <= set(row) and row["status"] == "classified" and row["label"] in ("NORMAL", "PNEUMONIA")
    assert row["path"] is None and len(row["content_sha256"]) == 64
    req = urllib.request.Request(f"{url}/api/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req) as r:
        info = json.loads(r.read())
    assert info["sha256"].startswith(row["sha256"]) and info["model_version"] == row["model_version"]
    status, row, _ = post(url, xray_png, query="?heatmap=1")
    assert status == 200 and row["heatmap_png"].startswith("data:image/png;base64,")


def test_bad_uploads_get_json_errors_and_the_server_lives(server, xray_png):
    url, _, _ = server
    status, body, _ = post(url, b"just some text, not an image", filename="notes.jpeg")
    assert status == 422 and "text file" in body["error"] and body["status"] == "failed"
    status, body, _ = post(url, os.urandom(5000), filename="noise.png")
    assert 400 <= status < 500
    # 413 from the Content-Length alone: the client sends only the headers and gets its answer.
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            (
                f"POST /api/v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {3 << 20}\r\n\r\n"
            ).encode()
        )
        assert s.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")
    req = urllib.request.Request(
        f"{url}/api/v1/classify",
        data=b"x=1",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 415
    assert post(url, xray_png)[0] == 200  # still alive


def test_a_full_queue_answers_503_with_retry_after(server, xray_png):
    """With --queue 1, a slow upload holds the only slot while its body trickles in."""
    url, _, _ = server
    host, port = url.rsplit("/", 1)[1].split(":")
    body, ctype = multipart(xray_png)
    slow = socket.create_connection((host, int(port)))
    head = (
        f"POST /api/v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow.sendall(head + body[:100])
    time.sleep(0.5)
    try:
        status, resp, headers = post(url, xray_png)
        assert status == 503 and headers.get("retry-after") == "1", resp
    finally:
        slow.sendall(body[100:])
        reply = slow.recv(65536)
        slow.close()
    assert b" 200 " in reply.split(b"\r\n")[0] + b" "
    assert post(url, xray_png)[0] == 200  # the slot is free again


def test_nothing_uploaded_reaches_the_disk_or_the_log(server, xray_png):
    url, log, spool = server
    big = cv2.imencode(
        ".png",
        cv2.resize(synthetic_xray(np.random.default_rng(12), 0, 96), (1200, 1200)),
        [cv2.IMWRITE_PNG_COMPRESSION, 0],
    )[1].tobytes()
    assert len(big) > 1 << 20  # above Starlette's 1 MB spooling threshold
    status, row, _ = post(url, big, filename="PATIENT_DOE_JOHN.png")
    assert status == 200
    assert list(spool.iterdir()) == []
    text = log.read_text()
    assert "PATIENT_DOE_JOHN" not in text and row["content_sha256"][:16] in text


def test_a_lan_address_needs_a_token(tiny_export):
    exe = str(Path(sys.executable).parent / "edge-pneumo")
    env = {k: v for k, v in os.environ.items() if k != "EDGE_PNEUMO_TOKEN"}
    p = subprocess.run(
        [exe, "serve", "--model", str(tiny_export), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 2 and "without a token" in p.stderr and "Traceback" not in p.stderr


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_the_page_in_a_real_browser(tiny_export, tmp_path):
    """Upload a real test X-ray through the page, with the token, and read the answer and the heatmap."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from conftest import real_data_dir
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data = real_data_dir()
    if data is not None:
        img = sorted((data / "test" / "PNEUMONIA").glob("*.jpeg"))[0].resolve()
    else:
        img = tmp_path / "x.png"
        cv2.imwrite(str(img), synthetic_xray(np.random.default_rng(13), 1, 96))
    model = Path(__file__).resolve().parents[1] / "exported" if data is not None else tiny_export
    proc, url, _ = start_server(model, tmp_path, env={"EDGE_PNEUMO_TOKEN": TOKEN})
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
        driver.find_element(By.ID, "file").send_keys(str(img))
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "label").text not in ("", "classifying..."))
        label = driver.find_element(By.ID, "label").text
        decisions = ("Pneumonia likely", "No pneumonia found", "Indeterminate: needs a reader")
        assert label in decisions, (label, driver.find_element(By.ID, "details").text)
        assert "threshold" in driver.find_element(By.ID, "details").text
        wait.until(
            lambda d: d.execute_script(
                "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0"
            )
        )
        assert "probability of pneumonia" in driver.find_element(By.ID, "details").text
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=10)
