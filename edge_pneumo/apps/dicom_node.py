"""A DICOM node: `serve --dicom-port 11112 --ae-title EDGEPNEUMO --allow-aet XRAY01`.

A C-STORE receiver (pynetdicom) for CR and DX image storage, so an X-ray machine or a PACS
can send images straight to the device. Associations from AE titles not on the allow-list
are refused. Each received image goes through the same guard and classifier as any file,
and its result is recorded once (keyed by the SOPInstanceUID) in the same ledger-backed
results file: JSON lines with `sop_instance_uid`.

Memory: pynetdicom runs each association in its own thread, so decodes are capped here:
`decode_slots` (1) at a time; a C-STORE that waits longer than `DECODE_WAIT_S` for one is
answered 0xA700 (out of resources: the sender retries). An image over the pixel budget gets
its failed row and a failure status (0xC000) whose ErrorComment says why. Deflated transfer
syntaxes are not accepted: pynetdicom would inflate the whole dataset before any check
(senders fall back to an uncompressed syntax, which every SCU proposes).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence

from edge_pneumo.apps.ledger import ResultSink
from edge_pneumo.decoders import limits
from edge_pneumo.device.result import FAILED
from edge_pneumo.errors import MissingRuntimeError

LOG = logging.getLogger("edge_pneumo.decoders.dicom")
STATUS_SUCCESS, STATUS_CANNOT_PROCESS, STATUS_OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
DECODE_WAIT_S = 10.0


class DicomNode:
    def __init__(
        self,
        clf,
        sink: ResultSink,
        port: int = 11112,
        ae_title: str = "EDGEPNEUMO",
        allowed: Sequence[str] = (),
        host: str = "0.0.0.0",
        decode_slots: int = 1,
    ):
        if not allowed:
            raise ValueError("a DICOM node needs at least one allowed calling AE title (--allow-aet)")
        self.clf, self.sink, self.port, self.ae_title, self.host = clf, sink, port, ae_title, host
        self.allowed = [a.strip() for a in allowed]
        self._server = None
        self._decodes = threading.BoundedSemaphore(decode_slots)

    def start(self):
        try:
            from pydicom.uid import UID
            from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
            from pynetdicom.sop_class import (
                ComputedRadiographyImageStorage,
                DigitalXRayImageStorageForPresentation,
                DigitalXRayImageStorageForProcessing,
            )
        except ImportError:
            raise MissingRuntimeError("the DICOM node needs pynetdicom: pip install 'edge-pneumo[dicom]'") from None
        ae = AE(ae_title=self.ae_title)
        for cx in (
            ComputedRadiographyImageStorage,
            DigitalXRayImageStorageForPresentation,
            DigitalXRayImageStorageForProcessing,
        ):
            ae.add_supported_context(cx, [ts for ts in ALL_TRANSFER_SYNTAXES if not UID(ts).is_deflated])
        ae.require_calling_aet = self.allowed
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event):
        if not self._decodes.acquire(timeout=DECODE_WAIT_S):
            LOG.warning("c-store refused: every decode slot stayed busy for %.0f s", DECODE_WAIT_S)
            return STATUS_OUT_OF_RESOURCES
        try:
            return self._store(event)
        finally:
            self._decodes.release()

    def _store(self, event):
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            sop = str(ds.get("SOPInstanceUID", ""))
            r = self.clf.predict_bytes(buf.getvalue(), name=f"dicom:{sop}")
            row = r.to_dict()
            row.update(path=None, sop_instance_uid=sop, calling_ae=str(event.assoc.requestor.ae_title).strip())
            self.sink.record(sop or f"sha256:{r.content_sha256}", row)
            LOG.info(
                "c-store sha256=%s status=%s label=%s p=%s",
                (r.content_sha256 or "")[:16],
                r.status,
                r.label,
                None if r.probability is None else round(r.probability, 4),
            )
            if r.status == FAILED and limits.is_over_budget(r.reason):
                from pydicom.dataset import Dataset

                status = Dataset()
                status.Status, status.ErrorComment = STATUS_CANNOT_PROCESS, limits.short_reason(r.reason)
                return status
            return STATUS_SUCCESS
        except Exception as e:  # one bad dataset must not take the node down
            LOG.error("c-store failed: %s", type(e).__name__)
            return STATUS_CANNOT_PROCESS
