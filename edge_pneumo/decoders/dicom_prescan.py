"""A stdlib-only pre-scan of a DICOM file's header, used only to refuse a decompression bomb early.

Why it exists: `import pydicom` costs ~190 ms of CPU (mostly pydicom.pixels -> pydicom.data.download
importing requests, urllib and tqdm), and `dicom.py` read the pixel budget's tags only after it, so a
7 kB file announcing 30000 x 30000 px took ~275 ms to refuse, for 1-13 ms of actual refusing. This
module reads, with `struct` and `zlib` only, the few things the budget needs: the transfer syntax,
Rows, Columns, NumberOfFrames, SamplesPerPixel, BitsAllocated and, for an encapsulated syntax, the
pixel data's frames (whose own headers announce a size too). `dicom.py` then applies the very same
checks, with the same messages, as it does after pydicom has read the file.

The project prefers maintained parsers, so this is not a second DICOM reader: it never replaces
pydicom for anything but that early refusal, and it follows pydicom 3's reading rules (filereader,
fileutil.read_undefined_length_value, encaps.generate_fragmented_frames) only on the well-formed
path. Whenever it is unsure that pydicom would read the same values from the same positions (big
endian, no DICM prefix, an unknown transfer syntax or VR, a command set, tags out of order, a
truncated sequence, an implicit-VR element of undefined length that could be read two ways, a
value that is not a plain number, too many elements, too deep a nesting...) it answers "unknown"
(`None`, or the `Unknown` exception inside), and pydicom decides, exactly as before.
"""

from __future__ import annotations

import re
import struct

MAX_ELEMENTS = 20_000  # top-level data elements (dicom.py refuses past this many, as pydicom reads them)
MAX_NESTED = 20_000  # elements inside sequences, all together: past this, unknown
MAX_DEPTH = 8  # sequences inside sequences: past this, unknown

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
# The transfer syntaxes pydicom 3 knows as encapsulated (UID.is_encapsulated) and reads as explicit VR
# little endian; the non-image ones (MIME, XML, SMPTE ST 2110, Papyrus) are left to pydicom.
ENCAPSULATED = frozenset(
    ["1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.5"]
    + [f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70, 80, 81, *range(90, 96))]
    + [f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)]
    + [f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)]
    + [f"1.2.840.10008.1.2.4.{n}" for n in range(201, 206)]
)

_VR16 = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_VR32 = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SEQ_END_BYTES = b"\xfe\xff\xdd\xe0"
_ITEM_BYTES = b"\xfe\xff\x00\xe0"
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005

# Top-level tags read here: (keyword, VR). The numbers must be one US of 2 bytes, NumberOfFrames one
# integer string; anything else is unknown.
_WANTED = {
    0x00280002: ("SamplesPerPixel", b"US"),
    0x00280008: ("NumberOfFrames", b"IS"),
    0x00280010: ("Rows", b"US"),
    0x00280011: ("Columns", b"US"),
    0x00280100: ("BitsAllocated", b"US"),
}
# Tags that dicom.py reads through pydicom before the budget (header_fields): in explicit VR, any other
# VR than these (or UN, which pydicom reads by its dictionary's VR) could make pydicom's conversion fail
# first, with another message.
_EXPECTED_VR = {
    0x00080018: b"UI",  # SOPInstanceUID
    0x00080060: b"CS",  # Modality
    0x00180015: b"CS",  # BodyPartExamined
    0x00185101: b"CS",  # ViewPosition
    0x00280004: b"CS",  # PhotometricInterpretation
    _CHARSET: b"CS",  # SpecificCharacterSet: pydicom decodes it as it reads, at every level
}
_IS = re.compile(rb" *[+-]?[0-9]{1,12}[ \x00]*")  # what pydicom's IS turns into the same int as int(str(value))
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class Unknown(Exception):
    """The pre-scan cannot be sure what pydicom would read: pydicom decides."""


class Header:
    """What the pre-scan found in a Part 10 file: the transfer syntax, where the dataset starts and, when
    not deflated, the top-level values of `_WANTED` (`get`, like a pydicom Dataset's) and the pixel data."""

    def __init__(self, syntax: str, start: int, values: dict | None = None, pixel_data: bytes | None = None):
        self.syntax = syntax
        self.start = start  # first byte after the file meta group (the deflate stream, when deflated)
        self.deflated = syntax == DEFLATED
        self.encapsulated = syntax in ENCAPSULATED
        self.values = values or {}
        self.pixel_data = pixel_data  # the (7FE0,0010) value as pydicom reads it; None: absent or unknown

    def get(self, keyword: str, default=None):
        return self.values.get(keyword, default)

    def frames(self, number_of_frames: int) -> list[bytes] | None:
        """The encapsulated pixel data's frames, as pydicom's generate_frames gives them; None when there
        is nothing to check or the pre-scan cannot be sure."""
        if not self.encapsulated or self.pixel_data is None:
            return None
        return frames(self.pixel_data, number_of_frames)


def scan(data: bytes) -> Header | None:
    """The header of a Part 10 file, or None (unknown). A deflated file's dataset is not read here:
    `inflated_header` reads the start of its inflated stream."""
    meta = file_meta(data)
    if meta is None:
        return None
    syntax, start = meta
    if syntax == DEFLATED:
        return Header(syntax, start)
    if syntax not in ENCAPSULATED and syntax not in (IMPLICIT, EXPLICIT):
        return None  # big endian, private or unknown: pydicom's business
    try:
        walk = _Walk(data, keep_pixels=syntax in ENCAPSULATED)
        values = walk.top_level(start, syntax == IMPLICIT, stop_at_pixels=False)
    except (Unknown, RecursionError):
        return None
    return Header(syntax, start, values, walk.pixel_data)


def inflated_header(head: bytes) -> dict | None:
    """The `_WANTED` values in the start of an inflated dataset (explicit VR little endian), read up to the
    first tag at or past (7FE0,0000), as dicom.py's `_header_of` reads them with pydicom: None when there
    is no Rows there; raises Unknown when unsure."""
    try:
        values = _Walk(head, keep_pixels=False).top_level(0, False, stop_at_pixels=True)
    except RecursionError:
        raise Unknown from None
    return values if "Rows" in values else None


def file_meta(data: bytes) -> tuple[str, int] | None:
    """(TransferSyntaxUID, offset of the first byte after the file meta group), or None: no 128-byte
    preamble and DICM prefix, or a meta group pydicom could read differently."""
    n = len(data)
    if n < 140 or data[128:132] != b"DICM":
        return None
    pos = 132
    first = True
    syntax = None
    while pos + 8 <= n:
        group, elem = _TAG.unpack_from(data, pos)
        vr = data[pos + 4 : pos + 6]
        if group != 2:
            if first or group == 0xFFFE or (vr in _VR32 and pos + 12 > n):
                return None  # no meta, a delimiter pydicom would swallow, or a header it cannot unpack
            break
        if first and not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B):
            return None  # pydicom would switch the meta group to implicit VR
        if vr in _VR16:
            length, value = _U16.unpack_from(data, pos + 6)[0], pos + 8
        elif vr in _VR32 and pos + 12 <= n:
            length, value = _U32.unpack_from(data, pos + 8)[0], pos + 12
        else:
            return None
        if length == 0xFFFFFFFF or value + length > n:
            return None
        if first and not _converts(vr, length):
            return None  # pydicom converts the first meta element as a test, and would fail or retry
        if elem == 0x0010:
            if vr != b"UI" or syntax is not None:
                return None
            syntax = data[value : value + length].decode("latin-1").rstrip("\0 ")
        first = False
        pos = value + length
    else:
        return None  # the file ends in (or right after) its meta group: no dataset
    if not syntax:
        return None
    return syntax, pos


def _converts(vr: bytes, length: int) -> bool:
    """Whether pydicom surely converts a value of this VR and length (it converts the first meta element
    as a test): a number of whole items, or a string it only decodes."""
    if vr in (b"UL", b"US"):
        return length % (4 if vr == b"UL" else 2) == 0
    return vr in (b"OB", b"UI", b"SH", b"AE", b"CS", b"LO")


def _upper(b0: int, b1: int) -> bool:
    return 0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B


class _Walk:
    """pydicom's data_element_generator / read_sequence / read_sequence_item, on the well-formed path only."""

    def __init__(self, buf: bytes, keep_pixels: bool):
        self.buf = buf
        self.n = len(buf)
        self.nested = 0
        self.keep_pixels = keep_pixels  # an encapsulated syntax: its frames are checked too
        self.pixel_data: bytes | None = None

    def top_level(self, pos: int, implicit: bool, stop_at_pixels: bool) -> dict:
        """Walk the top-level dataset from `pos` to the end of the buffer (or, with `stop_at_pixels`, to the
        first tag at or past (7FE0,0000)); return the `_WANTED` values found."""
        buf, n = self.buf, self.n
        if pos + 6 <= n:
            if _TAG.unpack_from(buf, pos)[0] in (0, 2, 0xFFFE):
                raise Unknown  # a command set (read in implicit VR first), a stray meta or delimiter
            if _upper(buf[pos + 4], buf[pos + 5]) == implicit:
                raise Unknown  # pydicom would switch between implicit and explicit VR here
        values: dict = {}
        count, previous = 0, -1
        while pos + 8 <= n:
            tag, vr, length, value = self._element(pos, implicit)
            if tag >> 16 == 0xFFFE:
                raise Unknown  # an item or delimiter at the top level
            count += 1
            if count > MAX_ELEMENTS:
                raise Unknown  # dicom.py refuses it with its own message (or, deflated, reads no header)
            if tag <= previous:
                raise Unknown  # out of order or repeated: pydicom keeps the last one, wherever it is
            previous = tag
            if stop_at_pixels and tag >= 0x7FE00000:
                break
            self._check_vr(tag, vr)
            pixels = tag == _PIXEL_DATA and self.keep_pixels and vr in (None, b"OB", b"OW")
            if length == 0xFFFFFFFF:
                if tag in _WANTED or tag in _EXPECTED_VR:
                    raise Unknown
                pos, delimiter = self._undefined(tag, vr, value, implicit, 0)
                if pixels and delimiter is not None:
                    self.pixel_data = buf[value:delimiter]
                continue
            end = value + length
            if tag in _WANTED:
                if end > n:
                    raise Unknown  # cut short: pydicom would convert a partial value
                values[_WANTED[tag][0]] = self._number(tag, buf[value:end])
            if pixels:
                self.pixel_data = buf[value:end]
            if end > n:
                break  # pydicom reads what is there and ends the dataset
            pos = end
        return values

    def _element(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, length, offset of the value) of the element at `pos` (8 bytes are there)."""
        buf = self.buf
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        if implicit or group == 0xFFFE:
            if group == 0xFFFE and not implicit and buf[pos + 4 : pos + 6] != b"\0\0":
                raise Unknown  # pydicom would read a VR there
            return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
        vr = buf[pos + 4 : pos + 6]
        if vr in _VR16:
            return tag, vr, _U16.unpack_from(buf, pos + 6)[0], pos + 8
        if vr in _VR32 and pos + 12 <= self.n:
            return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
        raise Unknown  # an unknown VR (pydicom guesses), or a 4-byte length cut off (pydicom fails)

    def _check_vr(self, tag: int, vr: bytes | None) -> None:
        if tag in _WANTED:
            if vr is not None and vr != _WANTED[tag][1]:
                raise Unknown
        elif tag in _EXPECTED_VR and vr is not None and vr not in (_EXPECTED_VR[tag], b"UN"):
            raise Unknown

    @staticmethod
    def _number(tag: int, raw: bytes) -> int:
        if tag == 0x00280008:
            if not _IS.fullmatch(raw):
                raise Unknown  # empty, several values, a float, a sign with spaces...: pydicom's rules differ
            return int(raw.rstrip(b" \x00"))
        if len(raw) != 2:
            raise Unknown  # empty or several values
        return _U16.unpack(raw)[0]

    def _undefined(self, tag: int, vr: bytes | None, pos: int, implicit: bool, depth: int):
        """An element of undefined length whose value starts at `pos`: (offset after it, offset where its
        value ends, or None for a sequence)."""
        if vr in (b"SQ", b"UN"):  # pydicom reads an undefined-length UN as a sequence
            return self._sequence(pos, implicit, depth + 1), None
        if vr is not None or tag == _PIXEL_DATA:  # explicit OB, OW, UT...; implicit pixel data (OB or OW)
            return self._value(pos)
        if tag >> 16 & 1:  # implicit, private: pydicom looks for an item tag next
            if self.buf[pos : pos + 4] == _ITEM_BYTES:
                return self._sequence(pos, implicit, depth + 1), None
            return self._value(pos)
        # Implicit, public: pydicom reads it as a sequence or a value by its dictionary's VR, which is not
        # here. Both readings must end at the same place.
        as_value = self._value(pos)
        if self._sequence(pos, implicit, depth + 1) != as_value[0]:
            raise Unknown
        return as_value

    def _value(self, pos: int) -> tuple[int, int]:
        """pydicom's read_undefined_length_value up to a sequence delimiter: items skipped by their lengths
        (encapsulated pixel data); failing that, the first delimiter's bytes anywhere. (offset after the
        delimiter and its 4-byte length, offset of the delimiter: the value is buf[pos:that])."""
        buf, n = self.buf, self.n
        p = pos
        while p + 4 <= n:
            head = buf[p : p + 4]
            if head == _SEQ_END_BYTES:
                return p + 8, p
            if head != _ITEM_BYTES or p + 8 > n:
                break
            p += 8 + _U32.unpack_from(buf, p + 4)[0]
        at = buf.find(_SEQ_END_BYTES, pos)
        if at < 0:
            raise Unknown  # pydicom raises EOFError, and its dataset comes back empty
        return at + 8, at

    def _sequence(self, pos: int, implicit: bool, depth: int) -> int:
        """An undefined-length sequence's items up to its delimiter; the offset after it."""
        if depth > MAX_DEPTH:
            raise Unknown
        buf, n = self.buf, self.n
        while True:
            if pos + 8 > n:
                raise Unknown  # pydicom: "No tag to read"
            group, elem = _TAG.unpack_from(buf, pos)
            tag, length = group << 16 | elem, _U32.unpack_from(buf, pos + 4)[0]
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM:
                raise Unknown
            start = pos + 8
            # pydicom's _is_implicit_vr in a sequence: an explicit item whose first VR is not two capitals is implicit
            item_implicit = implicit or (start + 6 <= n and not _upper(buf[start + 4], buf[start + 5]))
            if length == 0xFFFFFFFF:
                pos = self._item(start, None, item_implicit, depth)
            else:
                if start + length > n:
                    raise Unknown
                pos = self._item(start, start + length, item_implicit, depth)

    def _item(self, pos: int, end: int | None, implicit: bool, depth: int) -> int:
        """One item's elements: up to its item delimiter (end None) or exactly to `end`."""
        n = self.n
        while end is None or pos < end:
            if pos + 8 > n:
                raise Unknown
            tag, vr, length, value = self._element(pos, implicit)
            if tag >> 16 == 0xFFFE:
                if tag == _ITEM_END and length == 0 and end is None:
                    return pos + 8
                raise Unknown  # a delimiter inside a defined-length item, or a stray item tag
            self.nested += 1
            if self.nested > MAX_NESTED:
                raise Unknown
            if tag == _CHARSET:
                self._check_vr(tag, vr)
            if length == 0xFFFFFFFF:
                pos = self._undefined(tag, vr, value, implicit, depth)[0]
                continue
            pos = value + length
            if pos > n:
                raise Unknown
        if pos != end:
            raise Unknown  # the last element runs past the item's end
        return pos


def frames(buf: bytes, number_of_frames: int) -> list[bytes] | None:
    """pydicom 3's generate_frames(buf, number_of_frames=...) without an extended offset table, for
    well-formed fragments; None where pydicom would raise before a frame, or where unsure."""
    n = len(buf)
    if n < 8 or buf[:4] != _ITEM_BYTES:
        return None
    length = _U32.unpack_from(buf, 4)[0]
    if length % 4 or 8 + length > n:
        return None
    offsets = list(struct.unpack_from(f"<{length // 4}I", buf, 8))
    fragments, pos = [], 8 + length
    while pos + 4 <= n:
        head = buf[pos : pos + 4]
        if head == _SEQ_END_BYTES:
            break
        if head != _ITEM_BYTES or pos + 8 > n:
            return None  # pydicom raises; frames before it (with a basic offset table) would be checked
        size = _U32.unpack_from(buf, pos + 4)[0]
        if size == 0xFFFFFFFF:
            return None
        fragments.append(buf[pos + 8 : pos + 8 + size])
        pos += 8 + size
    if offsets:
        out, frame, index, offset, final = [], [], 0, 0, len(offsets) - 1
        for fragment in fragments:
            if index == final:
                frame.append(fragment)
                continue
            if offset < offsets[index + 1]:
                frame.append(fragment)
            else:
                out.append(frame)
                index += 1
                frame = [fragment]
            offset += len(fragment) + 8
        out.append(frame)
        return [b"".join(f) for f in out]
    if len(fragments) == 1:
        return fragments
    if len(fragments) == number_of_frames:
        return fragments
    if number_of_frames == 1:
        return [b"".join(fragments)]
    if len(fragments) > number_of_frames:  # split after fragments ending in a JPEG EOI / J2K EOC marker
        out, frame = [], []
        for fragment in fragments:
            frame.append(fragment)
            if b"\xff\xd9" in fragment[-10:]:
                out.append(b"".join(frame))
                frame = []
        if frame:
            out.append(b"".join(frame))
        return out
    return None  # fewer fragments than frames: pydicom raises
