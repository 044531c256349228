"""Decompression bombs, made without ever holding their pixels: files of about 1 MB or less whose
headers announce 30000 x 30000 px (900 MP). Shared by tests/test_hostile.py and bench/bench_hostile.py.

- PNG: a valid 8-bit grey PNG of zeros (0.88 MB), as in issue 25;
- TIFF: a valid deflate-compressed 8-bit grey TIFF of zeros, one strip;
- JPEG: a real 224 px JPEG whose SOF is patched to 30000 x 30000 (libjpeg would allocate it all
  and fill what is missing with grey);
- BMP: a BMP header announcing 30000 x 30000 x 8 bit with a few bytes of body;
- DICOM: a CR with Rows = Columns = 30000 whose pixel data is the patched JPEG (encapsulated),
  a CR whose Rows/Columns say 512 but whose JPEG frame's SOF says 30000 x 30000, and a deflated
  CR (the whole dataset zlib-compressed) of 900 MB of zero pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

SIDE = 30000
_ZERO_MB = bytes(1 << 20)


def _deflate_zeros(n: int, raw: bool = False, row: int | None = None) -> bytes:
    """zlib (or raw deflate) of n zero bytes, fed 1 MB at a time; with `row`, PNG rows (a 0 filter byte each)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    out = []
    if row is None:
        left = n
        while left:
            k = min(left, len(_ZERO_MB))
            out.append(z.compress(_ZERO_MB[:k]))
            left -= k
    else:
        block = bytes(row + 1) * 32
        rows = n // (row + 1)
        for _ in range(rows // 32):
            out.append(z.compress(block))
        out.append(z.compress(bytes(row + 1) * (rows % 32)))
    out.append(z.flush())
    return b"".join(out)


def png_bomb(side: int = SIDE) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = _deflate_zeros(side * (side + 1), row=side)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_bomb(side: int = SIDE) -> bytes:
    strip = _deflate_zeros(side * side)
    entries = [  # (tag, type, count, value): SHORT = 3, LONG = 4
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Adobe deflate
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, len(strip)),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + packed
    body += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + body + strip


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG with its SOF's size patched (the scan data stays the small image's)."""
    i = 2
    while i < len(jpeg):
        marker, seg_len = jpeg[i + 1], (jpeg[i + 2] << 8) | jpeg[i + 3]
        if 0xC0 <= marker <= 0xC3:
            return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]
        i += 2 + seg_len
    raise ValueError("no SOF")


def small_jpeg() -> bytes:
    import cv2
    import numpy as np

    grey = (np.add.outer(np.arange(224), np.arange(224)) % 256).astype(np.uint8)
    return cv2.imencode(".jpg", grey)[1].tobytes()


def jpeg_bomb(side: int = SIDE) -> bytes:
    return jpeg_with_size(small_jpeg(), side, side)


def jpeg_scan_bomb(side: int = 2000, repeats: int = 2000) -> bytes:
    """A flat progressive JPEG whose last (14-byte) scan is repeated: each repeat is one more pass
    over every coefficient (44 kB, 4 MP: 64 s to decode here before scans were counted)."""
    import cv2
    import numpy as np

    jpeg = cv2.imencode(".jpg", np.full((side, side), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    jpeg = jpeg.tobytes()
    last = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    return jpeg[:-2] + last * repeats + b"\xff\xd9"


def bmp_bomb(side: int = SIDE) -> bytes:
    palette = b"".join(bytes((g, g, g, 0)) for g in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 0, side * side, 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + side * side, 0, 0, offset) + info + palette + bytes(4096)


def _cr_dataset(rows: int, cols: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def nested_sequence(depth: int = 1):
    """A ReferencedImageSequence value of two items, nested `depth` deep through each item's own sequence:
    what a DICOM reader walks before group 0028 (shared by the pre-scan's tests and its fuzz seeds)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    items = []
    for k in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = DigitalXRayImageStorageForPresentation, f"1.2.{k}"
        if depth > 1:
            item.ReferencedImageSequence = nested_sequence(depth - 1)
        items.append(item)
    return Sequence(items)


def undefined_lengths(ds) -> None:
    """Every sequence and item of `ds` written with an undefined length (delimiters instead)."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


def dicom_jpeg_bomb(rows: int = SIDE, cols: int = SIDE, frame_side: int = SIDE) -> bytes:
    return dicom_jpeg_frame(rows, cols, jpeg_with_size(small_jpeg(), frame_side, frame_side))


def dicom_jpeg_frame(rows: int, cols: int, frame: bytes) -> bytes:
    """A JPEG Baseline CR of Rows x Columns whose one encapsulated frame is `frame`."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = _cr_dataset(rows, cols)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_jpeg_zero_height(width: int = 224) -> bytes:
    """A CR whose JPEG frame's SOF gives a height of 0 (left to a DNL marker that never comes): pydicom's
    pylibjpeg (libjpeg) decoded it for ever, past 1.6 GB (a fuzzing find: a 96 px seed's SOF bytes shuffled
    to 24672 x 0)."""
    return dicom_jpeg_frame(64, 64, jpeg_with_size(small_jpeg(), width, 0))


def dicom_jpeg_ls(pixels, near: int = 0, bits_stored: int | None = None) -> bytes:
    """A chest CR whose pixel data is JPEG-LS, lossless or near-lossless (`near`), encoded by CharLS;
    signed when `pixels` is, so a decode also exercises pydicom's sign fix-up."""
    from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

    ds = _cr_dataset(*pixels.shape)
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(pixels.dtype.kind == "i")
    syntax = JPEGLSNearLossless if near else JPEGLSLossless
    ds.compress(syntax, pixels, encoding_plugin="pyjpegls", jls_error=near)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_deflate_bomb(side: int = SIDE, rows: int | None = None) -> bytes:
    """Deflated Explicit VR Little Endian: the dataset after the file meta is one raw deflate stream
    holding side x side zero pixels; `rows` (= Rows = Columns) lets the header understate them."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _cr_dataset(rows or side, rows or side)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = side * side
    pixel_header = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", n)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [z.compress(body.getvalue() + pixel_header)]
    left = n
    while left:
        k = min(left, len(_ZERO_MB))
        parts.append(z.compress(_ZERO_MB[:k]))
        left -= k
    parts.append(z.flush())
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


def dicom_element_flood(zeros: int = 1 << 20) -> bytes:
    """A deflated CR whose dataset ends in `zeros` zero bytes and no pixel data: pydicom reads them as
    empty (0000,0000) elements, ~100,000 per CPU second (a fuzzing find: 3.6 kB took 5 s)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _cr_dataset(64, 64)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    for f in (meta, body):
        f.is_little_endian, f.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    del ds.Rows  # no image announced: the size cap alone would allow little, the element count decides
    write_dataset(body, ds)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = z.compress(body.getvalue() + bytes(zeros)) + z.flush()
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + stream


MAKERS = {  # name -> maker(side)
    "bomb.png": png_bomb,
    "bomb.tiff": tiff_bomb,
    "bomb.jpeg": jpeg_bomb,
    "bomb.bmp": bmp_bomb,
    "bomb_rows.dcm": lambda side: dicom_jpeg_bomb(side, side, side),
    "bomb_frame.dcm": lambda side: dicom_jpeg_bomb(512, 512, side),
    "bomb_deflate.dcm": dicom_deflate_bomb,
    "bomb_deflate_liar.dcm": lambda side: dicom_deflate_bomb(side, rows=512),
}


def write_bombs(folder: Path, side: int = SIDE, names=None) -> dict[str, Path]:
    """Write the bombs (cached: a file already there is kept) and return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or MAKERS:
        p = folder / name
        if not p.exists():
            tmp = p.with_suffix(".part")
            tmp.write_bytes(MAKERS[name](side))
            tmp.rename(p)
        out[name] = p
    return out


# Fuzz finds, kept as edits of the pydicom test files they were mutated from (no image file in the repo):
# (offset in the seed, bytes removed, bytes inserted), applied from the end so offsets stay valid.
FUZZ_FINDS = {
    "jpegls_hang": (
        "SC_rgb_jls_lossy_line.dcm",
        [(369, 1, b"&"), (585, 9, b""), (598, 12, b""), (634, 0, b"\x00"), (635, 1, b""), (660, 179, b"")]
        + [(841, 246, b"")],
    ),
    "jpegls_charls_hang": (
        "JPEGLSNearLossless_16.dcm",
        [(123, 1, b"\xf9"), (296, 36, b""), (352, 34, b""), (627, 102, b"")],
    ),
}


def fuzz_find(name: str) -> bytes:
    """The bytes of one fuzz find, rebuilt from the pydicom test file it was mutated from."""
    from pydicom.data import get_testdata_file

    seed_name, edits = FUZZ_FINDS[name]
    data = bytearray(Path(get_testdata_file(seed_name)).read_bytes())
    for offset, removed, inserted in sorted(edits, reverse=True):
        data[offset : offset + removed] = inserted
    return bytes(data)
