"""A DICOM node: `serve --dicom-port 11112 --ae-title EDGEPNEUMO --allow-aet XRAY01 [--forward AET@HOST:PORT]`.

A C-STORE receiver (pynetdicom) for CR, DX (for presentation and for processing) and Secondary
Capture image storage, in every transfer syntax the installed pydicom decoders handle, so an
X-ray machine, a film digitiser or a PACS can send images straight to the device. Associations
from AE titles not on the allow-list are refused. Each received image goes through the same
header rules, guard and classifier as any file, and its result is recorded once (keyed by the
SOPInstanceUID) in the same ledger-backed results file: JSON lines with `sop_instance_uid`.
The C-STORE answer says what happened: success for a classified image; a failure status with
the reason in Error Comment for an image the guard refused (0xC001) or could not read (0xC000);
0xA700 when the device itself failed (nothing is recorded then, so a resend is processed).
With a forwarder, each image's SR (and overlay) goes to the archive through the outbox.

Memory: pynetdicom runs each association in its own thread; one image at a time is decoded and
classified (`_model`), and a C-STORE that waits more than `DECODE_WAIT_S` for its turn is
answered 0xA700 (the sender retries). A deflated dataset is checked as sent, before pynetdicom
inflates it (0.88 MB can inflate to 900 MB): the pixel budget's inflate cap (decoders/dicom.py).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence

from edge_pneumo.apps.ledger import ResultSink
from edge_pneumo.apps.rows import log_summary
from edge_pneumo.decoders import limits
from edge_pneumo.errors import MissingRuntimeError

LOG = logging.getLogger("edge_pneumo.decoders.dicom")
STATUS_SUCCESS, STATUS_CANNOT_PROCESS, STATUS_REFUSED = 0x0000, 0xC000, 0xC001
STATUS_OUT_OF_RESOURCES = 0xA700  # our own trouble (e.g. the disk): nothing recorded, the sender may try again
DECODE_WAIT_S = 10.0  # a C-STORE waits this long for the one decode slot, then gets 0xA700
# CR, DX for presentation, DX for processing, Secondary Capture (digitised film, many gateways).
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
)


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixel data this installation can decode (pydicom's decoders)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                out.append(str(uid))
        except NotImplementedError:
            continue
    return out


def store_status(row: dict):
    """The C-STORE answer for a row: success, or a failure status with the reason in Error Comment."""
    if row.get("status") == "classified":
        return STATUS_SUCCESS
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = STATUS_REFUSED if row.get("status") == "rejected" else STATUS_CANNOT_PROCESS
    reason = row.get("reason") or row.get("status") or "refused"
    ds.ErrorComment = (limits.short_reason(reason) if limits.is_over_budget(reason) else reason)[:64]
    return ds


class DicomNode:
    def __init__(
        self,
        clf,
        sink: ResultSink,
        port: int = 11112,
        ae_title: str = "EDGEPNEUMO",
        allowed: Sequence[str] = (),
        host: str = "0.0.0.0",
        forward=None,
    ):
        if not allowed:
            raise ValueError("a DICOM node needs at least one allowed calling AE title (--allow-aet)")
        self.clf, self.sink, self.port, self.ae_title, self.host = clf, sink, port, ae_title, host
        self.allowed = [a.strip() for a in allowed]
        self.forward = forward  # a forward.Forwarder, or None
        self._server = None
        self.drift = None  # serve's DriftWindow, when it runs the node
        self._model = threading.Lock()  # one association at a time in the model (interpreters are not thread-safe)

    def start(self):
        try:
            from pynetdicom import AE, evt
        except ImportError:
            raise MissingRuntimeError("the DICOM node needs pynetdicom: pip install 'edge-pneumo[dicom]'") from None
        ae = AE(ae_title=self.ae_title)
        syntaxes = decodable_transfer_syntaxes()
        for cx in STORAGE_CLASSES:
            ae.add_supported_context(cx, syntaxes)
        ae.require_calling_aet = self.allowed
        if self.forward is not None:
            self.forward.start()
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.forward is not None:
            self.forward.stop()

    def _on_store(self, event) -> int:
        try:
            refused = _inflate_check(event)
            if refused is not None:
                return refused
            ds = event.dataset
            ds.file_meta = event.file_meta
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            sop = str(ds.get("SOPInstanceUID", ""))
            before = self.sink.ledger.get(sop) if sop else None
            if before is not None:  # sent again (a retry): the same answer, nothing recorded or reported twice
                return store_status(before)
            data = buf.getvalue()
            heat = self.forward is not None and self.forward.heatmap
            if not self._model.acquire(timeout=DECODE_WAIT_S):  # one decode at a time: a bounded wait
                LOG.warning("c-store refused: the decode slot stayed busy for %.0f s", DECODE_WAIT_S)
                return _status(STATUS_OUT_OF_RESOURCES, "busy: every decode slot is taken; send again")
            try:
                r = (self.clf.explain if heat else self.clf.predict_bytes)(data, name=f"dicom:{sop}")
            finally:
                self._model.release()
            row = r.to_dict()
            row.update(path=None, sop_instance_uid=sop, calling_ae=str(event.assoc.requestor.ae_title).strip())
            if self.forward is not None:  # queued before the row is recorded: a crash between them repeats, never loses
                row["forward_error"] = self.forward.report(ds, row, r, data)
            self.sink.record(sop or f"sha256:{r.content_sha256}", row)
            if self.drift is not None:
                self.drift.add(row)
            LOG.info("c-store %s", log_summary(r))
            return store_status(row)
        except Exception as e:  # one bad dataset must not take the node down; nothing recorded, so a resend is retried
            LOG.error("c-store failed: %s", type(e).__name__)
            from pydicom.dataset import Dataset

            status = Dataset()
            status.Status = STATUS_OUT_OF_RESOURCES
            status.ErrorComment = f"internal error ({type(e).__name__}); send again"[:64]
            return status


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status, ds.ErrorComment = code, comment[:64]
    return ds


def _inflate_check(event):
    """A deflated dataset, checked as sent (before pynetdicom inflates all of it): None, or the failure status."""
    from pydicom.uid import UID

    if not UID(str(event.context.transfer_syntax)).is_deflated:
        return None
    from edge_pneumo.decoders.dicom import check_inflated_size

    try:
        check_inflated_size(event.encoded_dataset(include_meta=True), "c-store")
    except limits.ImageTooLarge as e:
        LOG.warning("c-store refused: %s", limits.short_reason(str(e)))
        return _status(STATUS_CANNOT_PROCESS, limits.short_reason(str(e)))
    return None
