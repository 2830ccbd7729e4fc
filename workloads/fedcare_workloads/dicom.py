"""DICOM input behind a de-identification gate.

A DICOM file is refused, before any pixel is decoded, when it still carries:

* a non-empty attribute from PHI_TAGS (direct identifiers of the patient, the
  people who treated them and the institution: the "remove or blank" rows of
  DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile);
* any other non-empty person-name (VR PN) attribute, wherever it is;
* private attributes (odd groups), which the Basic Profile removes because
  vendors put anything in them;
* BurnedInAnnotation = YES (identifiers drawn into the pixels).

Nested sequences are searched too. The error names every offending tag by
keyword and (gggg,eeee) number and never includes a value, so it can be logged
and sent to the ServerApp safely.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import DatasetError

# (group, element) -> keyword. Keywords are spelled out so the message does not
# depend on pydicom's dictionary being complete.
PHI_TAGS: dict[int, str] = {
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x00100032: "PatientBirthTime",
    0x00101000: "OtherPatientIDs",
    0x00101001: "OtherPatientNames",
    0x00101002: "OtherPatientIDsSequence",
    0x00101005: "PatientBirthName",
    0x00101040: "PatientAddress",
    0x00101060: "PatientMotherBirthName",
    0x00101080: "MilitaryRank",
    0x00101090: "MedicalRecordLocator",
    0x00102150: "CountryOfResidence",
    0x00102152: "RegionOfResidence",
    0x00102154: "PatientTelephoneNumbers",
    0x00102155: "PatientTelecomInformation",
    0x00080050: "AccessionNumber",
    0x00080080: "InstitutionName",
    0x00080081: "InstitutionAddress",
    0x00080090: "ReferringPhysicianName",
    0x00080092: "ReferringPhysicianAddress",
    0x00080094: "ReferringPhysicianTelephoneNumbers",
    0x00081048: "PhysiciansOfRecord",
    0x00081050: "PerformingPhysicianName",
    0x00081060: "NameOfPhysiciansReadingStudy",
    0x00081070: "OperatorsName",
    0x00200010: "StudyID",
    0x00321032: "RequestingPhysician",
    0x00380010: "AdmissionID",
    0x00380400: "PatientInstitutionResidence",
    0x00400006: "ScheduledPerformingPhysicianName",
}
BURNED_IN_ANNOTATION = 0x00280301


class PHIError(DatasetError):
    """The DICOM file still identifies a person; it was not loaded."""


def _tag_name(tag) -> str:
    from pydicom.datadict import keyword_for_tag

    t = int(tag)
    keyword = PHI_TAGS.get(t) or keyword_for_tag(t) or ("private tag" if (t >> 16) % 2 else "tag")
    return f"{keyword} ({t >> 16:04X},{t & 0xFFFF:04X})"


def _has_value(elem) -> bool:
    value = elem.value
    if value is None:
        return False
    if elem.VR == "SQ":
        return len(value) > 0
    if isinstance(value, (bytes, str)):
        return bool(value.strip(b"\x00 " if isinstance(value, bytes) else "\x00 "))
    try:
        return len(value) > 0 and any(str(v).strip() for v in value)
    except TypeError:
        return str(value).strip() != ""


def phi_findings(ds) -> list[str]:
    """Names of the attributes that make `ds` identifying (empty list = passes)."""
    found: list[str] = []

    def walk(dataset, path: str) -> None:
        for elem in dataset:
            t = int(elem.tag)
            where = f"{path}{_tag_name(elem.tag)}"
            if elem.tag.is_private:
                found.append(where)
                continue
            if t == BURNED_IN_ANNOTATION and str(elem.value).strip().upper() == "YES":
                found.append(f"{where} = YES (identifiers burned into the pixels)")
            elif (t in PHI_TAGS or elem.VR == "PN") and _has_value(elem):
                found.append(where)
            if elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    walk(item, f"{where} > ")

    walk(ds, "")
    return found


def check_deidentified(ds, where: str) -> None:
    findings = phi_findings(ds)
    if findings:
        shown = ", ".join(findings[:8]) + (f" and {len(findings) - 8} more" if len(findings) > 8 else "")
        raise PHIError(
            f"{where}: DICOM file still carries patient-identifying data in {shown}; it was not loaded. "
            "De-identify the study (DICOM PS3.15 Basic Profile: remove or empty these attributes, "
            "drop private tags) and export it again."
        )


def read_dicom_pixels(path: Path, where: str) -> np.ndarray:
    """First frame as float32 grayscale in [0, 1], after the PHI gate has passed."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{where}: not a readable DICOM file ({type(exc).__name__}); export it again") from None
    check_deidentified(header, where)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs / bad pixel data
        raise DatasetError(
            f"{where}: DICOM pixel data cannot be decoded ({type(exc).__name__}); store it uncompressed "
            "(Explicit VR Little Endian) or as PNG"
        ) from None
    return _to_gray01(ds, np.asarray(pixels))


def _to_gray01(ds, pixels: np.ndarray) -> np.ndarray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # cine loops: the first frame is used
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
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
