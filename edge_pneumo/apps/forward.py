"""Send each DICOM image's answer back to the archive: `--forward AET@HOST:PORT` on `serve` and `watch`.

For every received (or watched) DICOM image: an SR (sr_report.build_sr) and, with `--forward-heatmap`,
the Grad-CAM overlay as a Secondary Capture, both queued in the durable outbox (outbox.Outbox) keyed
by the source SOP Instance UID, so each image gets one report whatever happens to the archive or to us.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pneumo.apps.outbox import Destination, Outbox, OutboxOptions

LOG = logging.getLogger("edge_pneumo.apps.forward")
DEFAULT_RETRY_MAX_S = OutboxOptions.retry_max_s
OVERLAY_MAX_SIDE = 1024


@dataclass(frozen=True)
class ForwardOptions:
    destination: str  # AET@HOST:PORT
    outbox: Path
    heatmap: bool = False
    calling_ae: str = "EDGEPNEUMO"
    retry_max_s: float = DEFAULT_RETRY_MAX_S

    def outbox_options(self) -> OutboxOptions:
        return OutboxOptions(
            folder=Path(self.outbox),
            destination=Destination.parse(self.destination),
            calling_ae=self.calling_ae,
            retry_first_s=min(OutboxOptions.retry_first_s, self.retry_max_s),
            retry_max_s=self.retry_max_s,
        )


def overlay_bgr(data: bytes, r, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The image with its Grad-CAM map over it (BGR uint8), at most `max_side` px a side."""
    import cv2

    from edge_pneumo.decoders.decode import decode_bytes
    from edge_pneumo.device.explain import result_overlay

    grey = decode_bytes(data, "upload").pixels
    scale = max_side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, (int(grey.shape[1] * scale), int(grey.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return result_overlay(grey, r)


class Forwarder:
    """Builds the reports for one image and queues them; `status()` for /api/v1/info and the page."""

    def __init__(self, clf, options: ForwardOptions):
        from edge_pneumo.apps.sr_report import ReportContext, require_highdicom

        require_highdicom()  # a missing highdicom fails at start, with the pip line, not at the first image
        self.options = options
        self.heatmap = options.heatmap
        self.context = ReportContext.from_classifier(clf, station=options.calling_ae)
        self.outbox = Outbox(options.outbox_options())

    def start(self) -> Forwarder:
        self._warm_up()
        self.outbox.start()
        return self

    def _warm_up(self) -> None:
        """Build one throwaway SR: the first one pays ~1 s of imports (pydicom's code dictionary), not an image."""
        from pydicom.dataset import Dataset

        from edge_pneumo.apps.sr_report import build_sr, derived_uid

        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", derived_uid("warm-up", "image")
        ds.StudyInstanceUID = ds.SeriesInstanceUID = derived_uid("warm-up", "study")
        build_sr(ds, {"status": "classified", "label": "NORMAL", "probability": 0.1}, self.context)

    def stop(self) -> None:
        self.outbox.stop()

    def status(self) -> dict:
        return {**self.outbox.status(), "heatmap": self.heatmap}

    def report(self, source, row: dict, result=None, data: bytes | None = None) -> str | None:
        """Queue the SR (and overlay) for one image; None when queued (or queued before), else why it cannot
        be made (a header highdicom cannot use: the caller records that in the row). A failure to queue
        (the disk) raises: the caller must not record the image as done, so that it is tried again."""
        t_classified = time.time()
        sop = str(source.get("SOPInstanceUID", "") or "")
        if not sop or not str(source.get("StudyInstanceUID", "") or ""):
            return "no SOPInstanceUID/StudyInstanceUID: nothing to attach a report to"
        made = self._build(source, row, result, data, sop)
        if isinstance(made, str):
            return made
        for key, ds in made:
            self.outbox.put(key, ds, t_classified)
        return None

    def _build(self, source, row, result, data, sop) -> list | str:
        from edge_pneumo.apps.sr_report import build_overlay_sc, build_sr

        out = []
        try:
            if not self.outbox.has(f"sr:{sop}"):
                out.append((f"sr:{sop}", build_sr(source, row, self.context)))
            heat = getattr(result, "heatmap", None)
            if self.heatmap and heat is not None and data is not None and not self.outbox.has(f"sc:{sop}"):
                rgb = np.ascontiguousarray(overlay_bgr(data, result)[..., ::-1])
                out.append((f"sc:{sop}", build_overlay_sc(source, rgb, row, self.context)))
        except Exception as e:  # a header highdicom cannot use: the row says so, the node keeps running
            LOG.error("forward: cannot build the report (%s)", type(e).__name__)
            return f"cannot build the report ({type(e).__name__}: {str(e)[:120]})"
        return out
