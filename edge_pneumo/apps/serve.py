"""`edge-pneumo serve`: a small LAN appliance: a page for people, a JSON API, a health check.

Safety first, because it listens on a clinic's network:
- 127.0.0.1 by default; any other address refuses to start without a token
  (EDGE_PNEUMO_TOKEN or --token-file), compared in constant time;
- uploads over the limit get 413 from their Content-Length, before the body is read, or as
  soon as a streamed body passes the limit;
- a bounded queue: when every slot is taken, 503 with Retry-After; one decode at a time (the
  model thread), each under the pixel budget (decoders/limits.py), so a decompression bomb is
  refused from its header. Peak RSS is bounded by about: the warm server (~100 MB) + `queue` x
  3 x the upload limit (the body as it arrives, its copy, the file field) + one decode at the
  budget (bench/RESULTS_hostile.md: ~130 MB over the process for a 60 MP 8-bit PNG, ~1.6 GB for
  a 60 MP 16-bit DICOM, whose modality LUT and stretch run in floating point);
- the upload is parsed in memory (never spooled to a temporary file, as Starlette's form
  parser does above 1 MB); nothing is written to disk;
- logs carry only a content hash, the status, label, score and timing: no file names, no
  DICOM patient tags; uvicorn's access log is off;
- every failure is a JSON error; no request can take the server down.
The rows are exactly `infer --format json` rows (result.Result.to_dict()).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import html
import ipaddress
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge_pneumo.errors import EdgePneumoError, MissingRuntimeError

TOKEN_ENV = "EDGE_PNEUMO_TOKEN"
DEFAULT_MAX_UPLOAD_MB = 32
LOG = logging.getLogger("edge_pneumo.apps.serve")
PAGE = Path(__file__).with_name("serve_page.html")
logging.getLogger("python_multipart").setLevel(logging.ERROR)  # a malformed upload gets its 400; no log line


class ServeConfigError(EdgePneumoError):
    exit_code = 2


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ServeConfigError(f"{token_file}: cannot read the token file ({e.strerror or e})") from None
        if len(token) < 16:
            raise ServeConfigError(
                f"{token_file}: the token is shorter than 16 characters; use a long random one "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def check_exposure(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise ServeConfigError(
            f"refusing to listen on {host} without a token: anyone on the network could use it. Set {TOKEN_ENV} "
            "or pass --token-file FILE (or keep the default --host 127.0.0.1)"
        )


def parse_upload(body: bytes, content_type: str, field: str = "file") -> bytes | None:
    """The bytes of one multipart/form-data field, parsed in memory by python-multipart (Starlette's
    parser, without Starlette's spooling to disk): about one more copy of the field at peak. The
    stdlib email parser it replaces peaked at ~12 x the body (0.88 MB -> 10.6 MB; 32 MB -> ~400 MB)."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        return None
    state = {"header": b"", "value": b"", "name": None, "chunks": None, "found": None}

    def on_header_field(data, start, end):
        state["header"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        if state["header"].lower() == b"content-disposition":
            state["name"] = parse_options_header(state["value"])[1].get(b"name")
        state["header"] = state["value"] = b""

    def on_headers_finished():
        if state["name"] == field.encode() and state["found"] is None:
            state["chunks"] = []

    def on_part_data(data, start, end):
        if state["chunks"] is not None:
            state["chunks"].append(data[start:end])

    def on_part_end():
        if state["chunks"] is not None:
            state["found"], state["chunks"] = b"".join(state["chunks"]), None
        state["name"] = None

    callbacks = dict(
        on_header_field=on_header_field,
        on_header_value=on_header_value,
        on_header_end=on_header_end,
        on_headers_finished=on_headers_finished,
        on_part_data=on_part_data,
        on_part_end=on_part_end,
    )
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        return None
    return state["found"]


class Slots:
    """A bounded count of requests in flight (waiting or running)."""

    def __init__(self, size: int):
        self.size, self.used = size, 0

    def take(self) -> bool:
        if self.used >= self.size:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used -= 1


def calibration_text(clf) -> str:
    """The page's line about the active calibration: what the probabilities and the band rest on."""
    cal = clf.calibration
    if clf.site is None:
        return (
            "Calibrated on the training population (paediatric X-rays of one hospital), not on this site: "
            "run `edge-pneumo calibrate` on this site's labelled images to fit it here."
        )
    c = clf.site.raw.get("counts") or {}
    return (
        f"Calibrated on this site: {cal.calibrated_on} ({c.get('NORMAL', '?')} normal and "
        f"{c.get('PNEUMONIA', '?')} pneumonia images; site file {cal.site})."
    )


def info_payload(clf, limits: dict, outbox=None) -> dict:
    """What `/api/v1/info` says: the model, its calibration, the guard's limits, the outbox."""
    m = clf.manifest
    cal = clf.calibration
    return {
        "model_version": clf.model_version,
        "artifact": clf.entry.name,
        "file": clf.entry.file,
        "sha256": clf.entry.sha256,
        "runtime": clf.entry.runtime,
        "precision": clf.entry.precision,
        "class_names": list(clf.class_names),
        "tta": "flip" if clf.tta else None,
        "threshold": {"raw": cal.threshold, "calibrated": cal.calibrated_threshold},
        "calibration": {
            "temperature": cal.temperature,
            "rule_out": cal.rule_out,
            "rule_in": cal.rule_in,
            "calibrated_on": cal.calibrated_on,
            "site": None if clf.site is None else clf.site.summary(),
        },
        "guard": None
        if clf.guard is None
        else {
            "dicom_rules": m.raw["guard"]["rules"],
            "pixels": {k: v for k, v in m.raw["guard"]["pixels"].items() if k != "train_range"},
            "layout": m.raw["guard"]["layout"],
            "features": m.raw["guard"]["features"].get(clf.entry.name),
        },
        "limits": limits,
        "outbox": None if outbox is None else outbox(),
        "notice": "screening aid only: results are not verified by a radiologist",
    }


def _refuse_upload(headers, max_upload: int) -> tuple[int, str] | None:
    """(status, message) when the headers alone refuse an upload: too large, unreadable length, not multipart."""
    length = headers.get("content-length")
    if length is not None:
        try:
            if int(length) > max_upload:
                return 413, f"upload larger than {max_upload} bytes"
        except ValueError:
            return 400, "bad Content-Length"
    if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return 415, "send the image as multipart/form-data, field 'file'"
    return None


async def _read_body(request, max_upload: int) -> bytes | None:
    """The upload's bytes, or None as soon as they pass `max_upload` (whatever Content-Length said)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_upload:
            return None
    return bytes(body)


def _log_result(r, t0: float) -> None:
    from edge_pneumo.apps.rows import log_summary

    LOG.info("classify %s ms=%.1f", log_summary(r), 1000 * (time.perf_counter() - t0))


class _ServeState:
    """What a classify request needs from its app: the model and its one thread, the queue, the drift window."""

    def __init__(self, clf, model, slots, drift, max_upload: int, json_response):
        self.clf, self.model, self.slots, self.drift = clf, model, slots, drift
        self.max_upload, self.JSON = max_upload, json_response


async def _classify(request, s: _ServeState):
    """POST /api/v1/classify after the token check: refuse early, hold a slot, classify on the model thread."""
    refused = _refuse_upload(request.headers, s.max_upload)
    if refused is not None:
        return s.JSON({"error": refused[1]}, status_code=refused[0])
    if not s.slots.take():
        return s.JSON(
            {"error": "busy: every slot of the queue is taken; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    try:
        body = await _read_body(request, s.max_upload)
        if body is None:
            return s.JSON({"error": f"upload larger than {s.max_upload} bytes"}, status_code=413)
        loop = asyncio.get_running_loop()
        # Parsed off the event loop (~20 ms of CPU per MB): /healthz keeps answering while uploads arrive.
        data = await loop.run_in_executor(None, parse_upload, body, request.headers.get("content-type", ""))
        del body
        if data is None:
            return s.JSON({"error": "no 'file' field in the upload"}, status_code=400)
        want_map = request.query_params.get("heatmap", "").lower() in ("1", "true", "yes")
        t0 = time.perf_counter()
        r = await loop.run_in_executor(s.model, lambda: s.clf.explain(data) if want_map else s.clf.predict_bytes(data))
        row = r.to_dict()
        row["path"] = None  # an upload has no path; its content hash names it
        s.drift.add(row)
        if want_map and r.heatmap is not None:
            row["heatmap_png"] = await loop.run_in_executor(s.model, _overlay_png, data, r)
        _log_result(r, t0)
        if r.status == "failed":
            return s.JSON({"error": r.reason, **row}, status_code=422)
        return s.JSON(row)
    finally:
        s.slots.give()


def create_app(
    clf, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD_MB << 20, queue: int = 8, outbox=None
):
    """The Starlette app; `outbox`: a callable giving the PACS outbox's status for /api/v1/info, or None."""
    try:
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse
        from starlette.routing import Route
    except ImportError:
        raise MissingRuntimeError("serve needs Starlette and uvicorn: pip install 'edge-pneumo[serve]'") from None
    from edge_pneumo import jsonout
    from edge_pneumo.device.drift import DriftWindow

    drift = DriftWindow.for_classifier(clf)  # the last 500 results, against the calibration population
    model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # LiteRT interpreters are not thread-safe
    slots = Slots(queue)

    class JSON(JSONResponse):
        def render(self, content) -> bytes:
            return jsonout.dumps(content).encode("utf-8")

    def authorised(request) -> bool:
        if token is None:
            return True
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def denied():
        return JSON(
            {"error": "missing or wrong token: send Authorization: Bearer TOKEN"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def healthz(request):
        return JSON({"status": "ok", "model_version": clf.model_version})

    async def info(request):
        if not authorised(request):
            return denied()
        return JSON(info_payload(clf, {"max_upload_bytes": max_upload, "queue": queue}, outbox))

    state = _ServeState(clf, model, slots, drift, max_upload, JSON)

    async def classify(request):
        if not authorised(request):
            return denied()
        return await _classify(request, state)

    async def drift_status(request):
        if not authorised(request):
            return denied()
        return JSON(drift.snapshot())

    calibration_note = html.escape(calibration_text(clf))

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("{{calibration}}", calibration_note))

    async def crash(request, exc):
        LOG.error("internal error: %s", type(exc).__name__)
        return JSON({"error": f"internal error ({type(exc).__name__}); the server is still running"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/healthz", healthz),
            Route("/api/v1/info", info),
            Route("/api/v1/classify", classify, methods=["POST"]),
            Route("/api/v1/drift", drift_status),
        ],
        exception_handlers={Exception: crash},
    )
    app.state.drift = drift  # run_server hands it to the DICOM node: one window for every result
    return app


def _overlay_png(data: bytes, r) -> str:
    """The upload with its heatmap over it, at most 1024 px a side, as a PNG data URL."""
    import cv2

    from edge_pneumo.apps.forward import overlay_bgr

    ok, png = cv2.imencode(".png", overlay_bgr(data, r, 1024))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def run_server(clf, host: str, port: int, token: str | None, max_upload_mb: float, queue: int, dicom=None) -> None:
    """Start the DICOM node (if asked) and the HTTP server; block until stopped."""
    check_exposure(host, token)
    try:
        import uvicorn
    except ImportError:
        raise MissingRuntimeError("serve needs Starlette and uvicorn: pip install 'edge-pneumo[serve]'") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    forward = getattr(dicom, "forward", None)
    outbox = None if forward is None else forward.status
    app = create_app(clf, token, int(max_upload_mb * (1 << 20)), queue, outbox=outbox)
    node = None
    if dicom is not None:
        dicom.drift = app.state.drift
        node = dicom.start()
        LOG.info(
            "DICOM node %s listening on port %d (allowed: %s)", dicom.ae_title, dicom.port, ", ".join(dicom.allowed)
        )
        if forward is not None:
            LOG.info("DICOM SR reports go to %s via the outbox %s", forward.options.destination, forward.outbox.folder)
    LOG.info(
        "serving %s (%s) on http://%s:%d%s",
        clf.model_version,
        clf.entry.name,
        host,
        port,
        "" if token is None else " (token required)",
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if node is not None:
            dicom.stop()
