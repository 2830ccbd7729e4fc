"""DICOM input behind a de-identification gate: an allow-list, not a deny-list.

A DICOM file is loaded only if it conforms to the DICOM PS3.15 Annex E *Basic
Application Level Confidentiality Profile*. The profile's action table is not
typed here: it is the table maintained in PyPI `dicom-anonymizer`
(`dicomanonymizer.dicom_anonymization_databases.<PROFILE_TABLE>`, generated
from the standard's own tables), read as data. A file is refused unless all
of these rules hold (the rule names appear in the refusal):

* ``declaration``: PatientIdentityRemoved (0012,0062) = YES and a
  DeidentificationMethod (0012,0063) or DeidentificationMethodCodeSequence
  (0012,0064) is present;
* ``X``, ``Z``, ``D``, ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` (remove / empty /
  replace with a dummy): the attribute is absent, empty, or holds one of the
  profile's dummy values (DUMMY_VALUES: what dicom-anonymizer and
  `fedcare-workloads deidentify` write). Any other value is refused, whatever
  it looks like: a gate cannot tell a real name from a harmless word;
* ``U`` and ``X/Z/U*`` (replace UIDs): every UID is a UUID-derived UID under
  the ``2.25.`` root (PS3.5 B.2), which encodes no device, site or date; an
  original vendor UID such as ``1.2.840.113619.2...`` is refused;
* ``private``: no private (odd-group) attribute anywhere, including after the
  pixel data (GE ultrasound keeps text in group 7FE1);
* ``overlay`` / ``curve``: no overlay (60xx) or curve (50xx) group at all;
* ``person-name``: no non-empty person name (VR PN) anywhere, even in an
  attribute the table keeps (defence in depth);
* ``burned-in``: ultrasound (Modality US or an ultrasound SOP class) must say
  BurnedInAnnotation (0028,0301) = NO explicitly, since ultrasound machines
  draw the patient's name into the frame; other images must not say YES.

The whole file is read (not only up to the pixel data) and sequences are
searched, file meta included. pydicom's own warnings (which quote raw values,
e.g. an invalid UID holding a name) are captured and never printed; only
their count goes to the site's log. A refusal names every offending tag and
its rule, never a value.

Pixel data is decoded only for the transfer syntaxes in DECODED_TRANSFER_SYNTAXES
(listed identically in workloads/README.md; a test keeps the two equal).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .data import DatasetError

log = logging.getLogger("fedcare.dicom")

PROFILE_TABLE = "dicomfields_2026c"  # PS3.15 2026c, as shipped by dicom-anonymizer 2.1
PROFILE = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"

_CATEGORY_ACTION = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
ACTION_WORDS = {
    "D": "replace with a dummy",
    "Z": "empty",
    "X": "remove",
    "U": "replace the UID",
    "Z/D": "empty or replace with a dummy",
    "X/Z": "remove or empty",
    "X/D": "remove or replace with a dummy",
    "X/Z/D": "remove, empty or replace with a dummy",
    "X/Z/U*": "remove, empty or replace contained UIDs",
}
# The dummy values of the profile's D action as written by dicom-anonymizer (and
# so by `fedcare-workloads deidentify`): by VR, "ANONYMIZED", "000Y", "0", 0,
# the date/time of 0001-01-01, b"Anonymized" and an .invalid URL.
DUMMY_VALUES = frozenset(
    {"ANONYMIZED", "000Y", "0", "00010101", "00010101010101.000000+0000", "000000.00", "http://anonymized.invalid"}
)
UUID_UID_ROOT = "2.25."
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODES = 0x00120064
BURNED_IN_ANNOTATION = 0x00280301
ULTRASOUND_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
    }
)
# Transfer syntaxes whose pixel data is decoded (pydicom's numpy handlers for the
# uncompressed and RLE ones, Pillow for JPEG Baseline and JPEG 2000). Anything
# else is refused by name before decoding. workloads/README.md lists the same.
DECODED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
}


class PHIError(DatasetError):
    """The DICOM file does not conform to the de-identification profile; it was not loaded."""


@dataclass(frozen=True)
class Finding:
    where: str  # "" at top level, else "SequenceKeyword (gggg,eeee) > "
    tag: str  # "Keyword (gggg,eeee)"
    rule: str  # a rule name from the module docstring

    def __str__(self) -> str:
        words = ACTION_WORDS.get(self.rule)
        rule = f"rule {self.rule} ({words})" if words else f"rule {self.rule}"
        return f"{self.where}{self.tag}: {rule}"


@lru_cache(maxsize=1)
def profile_actions() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """(exact tag -> action, masked (group, element, group mask, element mask, action) rows),
    read from dicom-anonymizer's table of the standard."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector(PROFILE_TABLE)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTION.items():
        for row in db[category]:
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            else:
                masked.append((row[0], row[1], row[2], row[3], action))
    return exact, tuple(masked)


def action_for(tag: int) -> str | None:
    exact, masked = profile_actions()
    action = exact.get(tag)
    if action is not None:
        return action
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gm, em, act in masked:
        if group & gm == g & gm and element & em == e & em:
            return act
    return None


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag(tag) or ("private tag" if (tag >> 16) % 2 else "tag")
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _values(elem) -> list:
    from pydicom.multival import MultiValue

    value = elem.value
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]  # str, bytes, numbers, PersonName (which iterates over its characters)


def _blank(v) -> bool:
    if isinstance(v, bytes):
        return not v.strip(b"\x00 ")
    return str(v).strip("\x00 ") == ""


def _harmless(v) -> bool:
    """Empty, or a dummy value of the profile."""
    if _blank(v):
        return True
    if isinstance(v, bytes):
        return v.strip(b"\x00 ") == b"Anonymized"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v == 0
    return str(v).strip("\x00 ") in DUMMY_VALUES


def _uuid_uid(v) -> bool:
    return _blank(v) or str(v).strip("\x00 ").startswith(UUID_UID_ROOT)


def _sequence_clean(elem) -> bool:
    """Every element of every item is harmless or a 2.25 UID (a sequence replaced per D/U*)."""
    for item in elem.value or []:
        for sub in item:
            if sub.VR == "SQ":
                if not _sequence_clean(sub):
                    return False
            elif sub.VR == "UI":
                if not all(_uuid_uid(v) for v in _values(sub)):
                    return False
            elif not all(_harmless(v) for v in _values(sub)):
                return False
    return True


def _is_overlay_or_curve(group: int) -> str | None:
    if group % 2 == 0 and 0x6000 <= group <= 0x60FF:
        return "overlay"
    if group % 2 == 0 and 0x5000 <= group <= 0x50FF:
        return "curve"
    return None


def phi_findings(ds) -> list[Finding]:
    """Every reason `ds` does not conform to the profile (empty list = passes)."""
    found: list[Finding] = []

    def walk(dataset, path: str) -> None:
        for elem in dataset:
            t = int(elem.tag)
            name = _tag_name(t)
            group = t >> 16
            if elem.tag.is_private:
                found.append(Finding(path, name, "private"))
                continue
            group_rule = _is_overlay_or_curve(group)
            if group_rule:
                found.append(Finding(path, name, group_rule))
                continue
            action = action_for(t)
            values = _values(elem)
            if action in ("U",):
                if not all(_uuid_uid(v) for v in values):
                    found.append(Finding(path, name, action))
                continue
            if action is not None:
                clean = _sequence_clean(elem) if elem.VR == "SQ" else all(_harmless(v) for v in values)
                if not clean:
                    found.append(Finding(path, name, action))
                continue
            if elem.VR == "PN" and not all(_harmless(v) for v in values):
                found.append(Finding(path, name, "person-name"))
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item, f"{path}{name} > ")

    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        walk(file_meta, "")
    walk(ds, "")
    found.extend(_declaration_findings(ds))
    return found


def _text(ds, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).strip("\x00 ").upper()


def is_ultrasound(ds) -> bool:
    return _text(ds, 0x00080060) == "US" or _text(ds, 0x00080016) in ULTRASOUND_SOP_CLASSES


def _declaration_findings(ds) -> list[Finding]:
    out: list[Finding] = []
    if _text(ds, PATIENT_IDENTITY_REMOVED) != "YES":
        out.append(Finding("", _tag_name(PATIENT_IDENTITY_REMOVED) + " must be YES", "declaration"))
    method = ds.get(DEIDENTIFICATION_METHOD)
    codes = ds.get(DEIDENTIFICATION_METHOD_CODES)
    if not (method is not None and not all(_blank(v) for v in _values(method))) and not (codes is not None and codes.value):
        out.append(
            Finding("", _tag_name(DEIDENTIFICATION_METHOD) + " or its code sequence (0012,0064) is missing", "declaration")
        )
    burned = _text(ds, BURNED_IN_ANNOTATION)
    if is_ultrasound(ds) and burned != "NO":
        out.append(
            Finding("", _tag_name(BURNED_IN_ANNOTATION) + f" must be NO for ultrasound (is {burned or 'absent'})", "burned-in")
        )
    elif burned == "YES":
        out.append(Finding("", _tag_name(BURNED_IN_ANNOTATION) + " = YES", "burned-in"))
    return out


def check_deidentified(ds, where: str) -> None:
    findings = phi_findings(ds)
    if findings:
        shown = "; ".join(str(f) for f in findings)
        raise PHIError(
            f"{where}: DICOM file does not conform to the {PROFILE}: {shown}. It was not loaded. "
            "De-identify it (e.g. `fedcare-workloads deidentify IN OUT`) and export it again.",
            public=f"DICOM refused by the de-identification gate: {shown}",
        )


@contextlib.contextmanager
def captured_pydicom_warnings(where: str):
    """Keep pydicom's warnings (which quote raw element values) off stderr and out of
    the logs; the site's log gets their count only."""
    records: list = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.levelname)

    logger = logging.getLogger("pydicom")
    handler = _Collect(logging.DEBUG)
    old_propagate, old_handlers = logger.propagate, list(logger.handlers)
    logger.handlers = [handler]
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
    finally:
        logger.handlers = old_handlers
        logger.propagate = old_propagate
    count = len(records) + len(caught)
    if count:
        log.warning("%s: pydicom reported %d warning(s) while reading this file (values withheld)", where, count)


def read_dicom(path: Path | str, where: str):
    """The whole file as a pydicom Dataset, with every element parsed (so warnings
    about any element are raised inside the capture)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with captured_pydicom_warnings(where):
            ds = pydicom.dcmread(path)  # the whole file: private groups after 7FE0 included
            for _ in ds.iterall():  # convert every raw element now, warnings included
                pass
        return ds
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, NotImplementedError) as exc:
        raise DatasetError(
            f"{where}: not a readable DICOM file ({type(exc).__name__}); export it again",
            public=f"not a readable DICOM file ({type(exc).__name__})",
        ) from None


def read_dicom_pixels(path: Path, where: str) -> np.ndarray:
    """First frame as float32 grayscale in [0, 1], after the de-identification gate has passed."""
    with captured_pydicom_warnings(where):
        ds = read_dicom(path, where)
        check_deidentified(ds, where)
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if syntax not in DECODED_TRANSFER_SYNTAXES:
            raise DatasetError(
                f"{where}: DICOM transfer syntax {syntax or '(none)'} is not decoded here; store it as one of "
                f"{', '.join(DECODED_TRANSFER_SYNTAXES.values())}, or as PNG",
                public=f"DICOM transfer syntax {syntax or '(none)'} is not decoded",
            )
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for missing codecs / bad pixel data
            raise DatasetError(
                f"{where}: DICOM pixel data cannot be decoded ({type(exc).__name__}); re-export it "
                "(Explicit VR Little Endian) or as PNG",
                public=f"DICOM pixel data cannot be decoded ({type(exc).__name__})",
            ) from None
        return _to_gray01(ds, np.asarray(pixels))


def _to_gray01(ds, pixels: np.ndarray) -> np.ndarray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # cine loops: the first frame is used
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3:
        # pydicom 3's pixel_array already converts YBR_* to RGB (as_rgb=True by default);
        # converting again would scramble the colours.
        # Luminance keeps the grayscale B-mode content of colour (Doppler-overlay) frames.
        pixels = np.rint(pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.int64)
    if np.issubdtype(pixels.dtype, np.floating):
        # Float pixel data has no BitsStored range: stretch to [0, 1].
        lo, hi = float(np.min(pixels)), float(np.max(pixels))
        out = np.zeros(pixels.shape) if hi <= lo else (pixels - lo) / (hi - lo)
    else:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        out = (pixels.astype(np.float64) - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32)
