"""A DICOM node: `serve --dicom-port 11112 --ae-title EDGEPNEUMO --allow-aet XRAY01`.

A C-STORE receiver (pynetdicom) for CR and DX image storage, so an X-ray machine or a PACS
can send images straight to the device. Associations from AE titles not on the allow-list
are refused. Each received image goes through the same guard and classifier as any file,
and its result is recorded once (keyed by the SOPInstanceUID) in the same ledger-backed
results file: JSON lines with `sop_instance_uid`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from edge_pneumo.apps.ledger import ResultSink
from edge_pneumo.errors import MissingRuntimeError

LOG = logging.getLogger("edge_pneumo.decoders.dicom")
STATUS_SUCCESS, STATUS_CANNOT_PROCESS = 0x0000, 0xC000


class DicomNode:
    def __init__(
        self,
        clf,
        sink: ResultSink,
        port: int = 11112,
        ae_title: str = "EDGEPNEUMO",
        allowed: Sequence[str] = (),
        host: str = "0.0.0.0",
    ):
        if not allowed:
            raise ValueError("a DICOM node needs at least one allowed calling AE title (--allow-aet)")
        self.clf, self.sink, self.port, self.ae_title, self.host = clf, sink, port, ae_title, host
        self.allowed = [a.strip() for a in allowed]
        self._server = None
        self.drift = None  # serve's DriftWindow, when it runs the node

    def start(self):
        try:
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
            ae.add_supported_context(cx, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = self.allowed
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event) -> int:
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
            if self.drift is not None:
                self.drift.add(row)
            LOG.info(
                "c-store sha256=%s status=%s label=%s p=%s",
                (r.content_sha256 or "")[:16],
                r.status,
                r.label,
                None if r.probability is None else round(r.probability, 4),
            )
            return STATUS_SUCCESS
        except Exception as e:  # one bad dataset must not take the node down
            LOG.error("c-store failed: %s", type(e).__name__)
            return STATUS_CANNOT_PROCESS
