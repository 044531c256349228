"""Bytes -> grey pixels: JPEG, DICOM, the rest, with native stderr captured per file."""
