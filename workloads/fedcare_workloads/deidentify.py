"""`fedcare-workloads deidentify IN OUT`: apply the DICOM PS3.15 Basic Profile.

For a hospital whose export is not yet de-identified. The profile is applied by
dicom-anonymizer (the same table the gate in dicom.py checks against, so what
this writes passes the gate), then overlay (60xx) and curve (50xx) groups are
dropped as a whole, private tags removed, and the result declares
PatientIdentityRemoved = YES with a DeidentificationMethod and the DICOM code
113100 (Basic Application Confidentiality Profile).

Burned-in text cannot be removed from pixels by a header tool. An ultrasound
file whose BurnedInAnnotation is not NO is written but still refused by the gate;
a hospital that has checked the frames says so with
`--attest-no-burned-in-annotation`, which writes BurnedInAnnotation = NO.

The output is checked with the gate; what remains is reported per file, by tag
and rule, never by value.
"""

from __future__ import annotations

from pathlib import Path

from .data import DatasetError
from .dicom import PROFILE, PROFILE_TABLE, captured_pydicom_warnings, phi_findings, read_dicom


# LO: at most 64 characters.
METHOD = f"PS3.15 E Basic Profile, fedcare deidentify ({PROFILE_TABLE})"


def _drop_overlay_and_curve_groups(ds) -> None:
    for elem in list(ds):
        group = elem.tag.group
        if group % 2 == 0 and (0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF):
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value or []:
                _drop_overlay_and_curve_groups(item)


def deidentify_dataset(ds, attest_no_burned_in: bool = False) -> None:
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def rules():
        return initialize_actions(PROFILE_TABLE)

    def apply(dataset) -> None:
        # dicom-anonymizer applies exact-tag rules to the top level only; the profile
        # applies to attributes in sequences too, so each remaining item gets the rules.
        anonymize_dataset(dataset, delete_private_tags=True, base_rules_gen=rules)
        for elem in list(dataset):
            if elem.VR == "SQ":
                for item in elem.value or []:
                    apply(item)

    apply(ds)
    ds.remove_private_tags()
    _drop_overlay_and_curve_groups(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    if attest_no_burned_in:
        ds.BurnedInAnnotation = "NO"
    if getattr(ds, "file_meta", None) is not None and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def deidentify_file(src: Path, dst: Path, attest_no_burned_in: bool = False) -> dict:
    where = src.name
    with captured_pydicom_warnings(where):
        ds = read_dicom(src, where)
        try:
            deidentify_dataset(ds, attest_no_burned_in)
        except NotImplementedError as exc:  # dicom-anonymizer: a VR it cannot blank
            raise DatasetError(f"{where}: cannot be de-identified automatically ({exc})") from None
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst)
        remaining = [str(f) for f in phi_findings(read_dicom(dst, where))]
    return {"in": str(src), "out": str(dst), "passes_gate": not remaining, "remaining": remaining}


def deidentify_path(src: Path | str, dst: Path | str, attest_no_burned_in: bool = False) -> dict:
    """A file, or every *.dcm under a directory (same relative layout under `dst`)."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise DatasetError(f"{src}: IN and OUT are the same; write the de-identified copy elsewhere")
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
        if not files:
            raise DatasetError(f"{src}: no .dcm files found")
        results = [deidentify_file(f, dst / f.relative_to(src), attest_no_burned_in) for f in files]
    elif src.is_file():
        target = dst / src.name if dst.is_dir() else dst
        results = [deidentify_file(src, target, attest_no_burned_in)]
    else:
        raise DatasetError(f"{src}: no such file or directory")
    return {
        "files": results,
        "written": len(results),
        "passing_gate": sum(r["passes_gate"] for r in results),
        "profile": PROFILE,
    }
