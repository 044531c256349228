"""The answer as DICOM, for the archive: a Comprehensive SR (and optionally the Grad-CAM overlay as a
Secondary Capture) in the source image's study, made with highdicom.

The SR says what a row says, in codes: the decision, the calibrated probability, the threshold and the
indeterminate band, the model version, the artifact's sha256, the calibration in force, the screening-aid
statement, and a reference to the source image. SNOMED CT and DCM codes where they exist; the rest in the
private scheme `99EDGEPN`, declared in the SR's Coding Scheme Identification Sequence.

UIDs are derived from the source SOP Instance UID (name-based UUIDs), so the same image
always gives the same SR UID: a resend after a crash replaces, it never adds a second report.
"""

from __future__ import annotations

import uuid

from edge_pneumo.errors import MissingRuntimeError

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "edge-pneumo.derived-uid")

SCHEME = "99EDGEPN"
SCHEME_NAME = "edge-pneumo private codes"
SCREENING_AID = (
    "Screening aid only: produced by software, not verified by a radiologist; it must not be used as a diagnosis."
)
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
MANUFACTURER = "edge-pneumo"

# The device's four answers, in its own words (no standard code says "pneumonia likely" on a screening aid),
# and the SNOMED CT presence each maps to (None: no claim).
DECISIONS = {
    "pneumonia": ("PNEUMONIA_LIKELY", "Pneumonia likely", ("52101004", "SCT", "Present")),
    "no_pneumonia": ("NO_PNEUMONIA", "No pneumonia found", ("272519000", "SCT", "Absent")),
    "indeterminate": ("INDETERMINATE", "Indeterminate", ("373068000", "SCT", "Undetermined")),
    None: ("NOT_ASSESSED", "Not assessed", None),
}


def decision_of(row: dict) -> str | None:
    """ "pneumonia", "no_pneumonia", "indeterminate" or None (not assessed). Uses the row's own `decision`
    when the runtime writes one; otherwise derives it from status, label and confidence."""
    if "decision" in row:
        return row["decision"]
    if row.get("status") != "classified":
        return None
    if row.get("confidence") == "indeterminate":
        return "indeterminate"
    return "pneumonia" if row.get("label") == "PNEUMONIA" else "no_pneumonia"


class ReportContext:
    """What every report from this device says about itself: model, artifact, calibration in force."""

    __slots__ = (
        "model_version", "artifact", "artifact_sha256", "threshold", "band", "temperature", "station", "site",
        "calibrated_on",
    )  # fmt: skip

    def __init__(
        self, model_version, artifact, artifact_sha256, threshold, band, temperature, station="EDGEPNEUMO",
        site=None, calibrated_on=None,
    ):  # fmt: skip
        self.model_version, self.artifact, self.artifact_sha256 = model_version, artifact, artifact_sha256
        self.threshold, self.band, self.temperature, self.station = threshold, band, temperature, station
        self.site, self.calibrated_on = site, calibrated_on

    @classmethod
    def from_classifier(cls, clf, station: str = "EDGEPNEUMO") -> ReportContext:
        from edge_pneumo.device.scoring import effective_band

        cal = clf.calibration
        lo, hi = effective_band(cal.threshold, cal.rule_out, cal.rule_in)
        return cls(
            clf.model_version,
            clf.entry.name,
            clf.entry.sha256,
            cal.calibrated_threshold,
            (cal.calibrate(lo), cal.calibrate(hi)),
            cal.temperature,
            station,
            getattr(cal, "site", None),  # a site calibration file, where the runtime has one
            getattr(cal, "calibrated_on", None),
        )

    def calibration_text(self, row: dict) -> str:
        """The row's own site and `calibrated_on` when it has them, else the classifier's."""
        site = row.get("site") or self.site
        on = row.get("calibrated_on") or self.calibrated_on
        where = f"site calibration {site}" if site else "shipped calibration (no site calibration file)"
        return f"{where}{f', calibrated on {on}' if on else ''}; temperature {self.temperature:.4g}"


def require_highdicom():
    try:
        import highdicom
    except ImportError:
        raise MissingRuntimeError("writing DICOM SR needs highdicom: pip install 'edge-pneumo[dicom]'") from None
    return highdicom


def derived_uid(source_uid: str, kind: str) -> str:
    """A UID fixed by (source, kind): the same image always gets the same report UID. A 2.25 UID made
    from a name-based UUID (RFC 4122 version 5); pydicom's generate_uid ignores its entropy with prefix None."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{kind}:{source_uid}').int}"


# Patient and study attributes highdicom copies into a report; Type 2 (may be empty, must be present).
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip


def evidence(source):
    """The source's identifying attributes (groups 0008, 0010, 0020; no sequences, no pixels), with
    empty Type 2 patient/study attributes where a sender left them out: highdicom needs them present."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for el in source:
        if el.tag.group in (0x0008, 0x0010, 0x0020) and el.VR != "SQ":
            out.add(el)
    for key in _TYPE2:
        if key not in out:
            setattr(out, key, "")
    return out


def _private(value: str, meaning: str):
    return require_highdicom().sr.CodedConcept(value, SCHEME, meaning)


def _declare_scheme(ds) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "edge-pneumo project"
    ds.CodingSchemeIdentificationSequence = [item]


def build_sr(source, row: dict, ctx: ReportContext):
    """A Comprehensive SR for one received image (`source`: its dataset, pixels not needed)."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    source = evidence(source)
    sr = hd.sr
    decision = decision_of(row)
    code, meaning, presence = DECISIONS[decision]
    unit = sr.CodedConcept("1", "UCUM", "no units")
    items = [
        sr.CodeContentItem(
            _private("DECISION", "Screening decision"), _private(code, meaning), relationship_type="CONTAINS"
        )
    ]
    if presence is not None:
        finding = sr.CodeContentItem(
            codes.DCM.Finding, sr.CodedConcept("233604007", "SCT", "Pneumonia"), relationship_type="CONTAINS"
        )
        finding.ContentSequence = sr.ContentSequence(
            [
                sr.CodeContentItem(
                    codes.DCM.PresenceOfProperty, sr.CodedConcept(*presence), relationship_type="HAS PROPERTIES"
                )
            ]
        )
        items.append(finding)
    if row.get("probability") is not None:
        items.append(
            sr.NumContentItem(codes.DCM.Probability, float(row["probability"]), unit, relationship_type="CONTAINS")
        )
    if decision is None:
        reason = (row.get("reason") or row.get("status") or "not assessed")[:1024]
        items.append(
            sr.TextContentItem(_private("REASON", "Reason not assessed"), reason, relationship_type="CONTAINS")
        )
    threshold = row.get("threshold") if row.get("threshold") is not None else ctx.threshold
    items += [
        sr.NumContentItem(
            _private("THRESHOLD", "Decision threshold"), float(threshold), unit, relationship_type="CONTAINS"
        ),
        sr.NumContentItem(
            _private("BAND_LOW", "Indeterminate band, lower limit"),
            float(ctx.band[0]),
            unit,
            relationship_type="CONTAINS",
        ),
        sr.NumContentItem(
            _private("BAND_HIGH", "Indeterminate band, upper limit"),
            float(ctx.band[1]),
            unit,
            relationship_type="CONTAINS",
        ),
        sr.TextContentItem(codes.DCM.AlgorithmName, f"edge-pneumo {ctx.artifact}", relationship_type="CONTAINS"),
        sr.TextContentItem(codes.DCM.AlgorithmVersion, ctx.model_version, relationship_type="CONTAINS"),
        sr.TextContentItem(
            _private("ARTIFACT_SHA256", "Model artifact sha256"), ctx.artifact_sha256, relationship_type="CONTAINS"
        ),
        sr.TextContentItem(
            _private("CALIBRATION", "Calibration in force"), ctx.calibration_text(row), relationship_type="CONTAINS"
        ),
        sr.TextContentItem(codes.DCM.Comment, SCREENING_AID, relationship_type="CONTAINS"),
        sr.ImageContentItem(
            codes.DCM.SourceImage, str(source.SOPClassUID), str(source.SOPInstanceUID), relationship_type="CONTAINS"
        ),
    ]
    observer = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(ctx.artifact_sha256, "device"),
            name=ctx.station,
            manufacturer_name=MANUFACTURER,
            model_name=ctx.model_version[:64],
        ),
    )
    root = sr.ContainerContentItem(codes.LN.DiagnosticImagingReport, template_id=None)
    root.ContentSequence = sr.ContentSequence([*observer, *items])
    study = str(source.StudyInstanceUID)
    ds = sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=derived_uid(study, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(str(source.SOPInstanceUID), "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    ds.SeriesDescription = "edge-pneumo screening report (unverified)"
    _declare_scheme(ds)
    return ds


def build_overlay_sc(source, overlay_rgb, row: dict, ctx: ReportContext):
    """The Grad-CAM overlay (RGB uint8) as a Secondary Capture in the source's study, its own series."""
    hd = require_highdicom()
    source = evidence(source)
    ds = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid(str(source.StudyInstanceUID), "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid(str(source.SOPInstanceUID), "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    ds.SeriesDescription = "edge-pneumo Grad-CAM overlay (screening aid, unverified)"
    ds.ImageComments = f"{DECISIONS[decision_of(row)][1]}; {ctx.model_version}; {SCREENING_AID}"[:10240]
    ds.BurnedInAnnotation = "YES"
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ds.SourceImageSequence = [ref]
    return ds
