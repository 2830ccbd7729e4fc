"""DICOM input: the PS3.15 Basic Profile allow-list gate, deidentify, and pixel conversion."""

import glob
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fedcare_workloads.cli import main as cli_main
from fedcare_workloads.data import DatasetError, load_dataset
from fedcare_workloads.deidentify import deidentify_path
from fedcare_workloads.dicom import (
    DECODED_TRANSFER_SYNTAXES,
    PHIError,
    action_for,
    phi_findings,
    read_dicom,
    read_dicom_pixels,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

CLASSES = ("normal", "benign", "malignant")
PATIENT = "DOE^JANE"
README = Path(__file__).resolve().parents[1] / "README.md"
PYDICOM_FILES = sorted(glob.glob(os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "*.dcm")))


def write_dicom(path: Path, pixels: np.ndarray | None = None, photometric="MONOCHROME2", **attrs) -> Path:
    """A conforming (de-identified) ultrasound file; `attrs` add or override attributes
    (value None deletes one)."""
    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 4096 if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(None)  # 2.25.<uuid>
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(None)
    ds.SeriesInstanceUID = generate_uid(None)
    ds.Modality = "US"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "test export"
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for tag, (vr, value) in attrs.pop("_raw", {}).items():
        ds.add_new(tag, vr, value)
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deidentified_dicom_is_read_and_scaled(tmp_path):
    px = np.full((32, 32), 4095, np.uint16)
    px[:16] = 0
    img = read_dicom_pixels(write_dicom(tmp_path / "x.dcm", px), "x.dcm")
    assert img.dtype == np.float32 and img.shape == (32, 32)
    assert np.allclose(img[:16], 0) and np.allclose(img[16:], 1)


def test_monochrome1_is_inverted(tmp_path):
    img = read_dicom_pixels(write_dicom(tmp_path / "x.dcm", np.zeros((32, 32), np.uint16), "MONOCHROME1"), "x")
    assert np.allclose(img, 1.0)


def test_profile_table_comes_from_the_maintained_package():
    # A few rows of PS3.15 Table E.1-1, as the package has them.
    assert action_for(0x00100010) == "Z"  # PatientName
    assert action_for(0x00081030) == "X"  # StudyDescription
    assert action_for(0x00101010) == "X"  # PatientAge
    assert action_for(0x00080018) == "U"  # SOPInstanceUID
    assert action_for(0x00181000) == "X/Z/D"  # DeviceSerialNumber
    assert action_for(0x60003000) == "X"  # OverlayData, a repeating-group row
    assert action_for(0x00280010) is None  # Rows: kept


SEQ_ITEM = Dataset()
SEQ_ITEM.ReferencedSOPInstanceUID = "1.2.840.113619.2.55.3.1234"


# One crafted file per rule of the profile; each must be refused naming the tag and rule, never the value.
@pytest.mark.parametrize(
    ("attrs", "expected", "secret"),
    [
        ({"PatientName": PATIENT}, "PatientName (0010,0010): rule Z", "DOE"),
        ({"StudyDescription": "Breast US DUPONT Marie"}, "StudyDescription (0008,1030): rule X", "DUPONT"),
        ({"StudyDate": "20240317"}, "StudyDate (0008,0020): rule Z", "20240317"),
        ({"PatientAge": "047Y"}, "PatientAge (0010,1010): rule X", "047Y"),
        ({"DeviceSerialNumber": "SN-99812"}, "DeviceSerialNumber (0018,1000): rule X/Z/D", "99812"),
        ({"StationName": "ECHO-ROUEN-3"}, "StationName (0008,1010): rule X/Z/D", "ROUEN"),
        ({"ContentDate": "20240317"}, "ContentDate (0008,0023): rule Z/D", "20240317"),
        ({"AcquisitionDate": "20240317"}, "AcquisitionDate (0008,0022): rule X/Z", "20240317"),
        ({"ProtocolName": "DUPONT follow-up"}, "ProtocolName (0018,1030): rule X/D", "DUPONT"),
        ({"PersonName": "SMITH^JOHN"}, "PersonName (0040,A123): rule D", "SMITH"),
        ({"SOPInstanceUID": "1.2.840.113619.2.55.3.4"}, "SOPInstanceUID (0008,0018): rule U", "113619"),
        ({"ReferencedImageSequence": Sequence([SEQ_ITEM])}, "ReferencedImageSequence (0008,1140): rule X/Z/U*", "113619"),
        ({"_raw": {0x60000010: ("US", 32)}}, "OverlayRows (6000,0010): rule overlay", None),
        ({"_raw": {0x50000005: ("US", 1)}}, "(5000,0005): rule curve", None),
        ({"PatientIdentityRemoved": "NO"}, "PatientIdentityRemoved (0012,0062) must be YES: rule declaration", None),
        ({"DeidentificationMethod": None}, "DeidentificationMethod (0012,0063) or its code sequence", None),
        ({"BurnedInAnnotation": None}, "BurnedInAnnotation (0028,0301) must be NO for ultrasound (is absent)", None),
        ({"BurnedInAnnotation": "YES"}, "must be NO for ultrasound (is YES): rule burned-in", None),
        ({"ResponsiblePerson": "MARTIN^PAUL"}, "ResponsiblePerson (0010,2297)", "MARTIN"),
    ],
)
def test_each_profile_rule_refuses_naming_tag_and_rule_never_the_value(tmp_path, attrs, expected, secret):
    path = write_dicom(tmp_path / "x.dcm", **attrs)
    with pytest.raises(PHIError) as err:
        read_dicom_pixels(path, "images/x.dcm (labels.csv line 2)")
    msg = str(err.value)
    assert expected in msg and "images/x.dcm (labels.csv line 2)" in msg and "was not loaded" in msg
    assert expected in err.value.public
    if secret:
        assert secret not in msg and secret not in err.value.public


def test_private_groups_after_the_pixel_data_are_read(tmp_path):
    # GE ultrasound keeps text in private group 7FE1, *after* (7FE0,0010) PixelData, and a
    # person name can sit in (FFFA,FFFA) Digital Signatures Sequence: stop_before_pixels missed both.
    sig = Dataset()
    sig.add_new(0x00100010, "PN", PATIENT)
    path = write_dicom(tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.add_new(0x7FE10010, "LO", "GEMS_Ultrasound_MovieGroup_001")
    ds.add_new(0x7FE11001, "LO", PATIENT)
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([sig]))
    ds.save_as(path)
    with pytest.raises(PHIError) as err:
        read_dicom_pixels(path, "x")
    msg = str(err.value)
    assert "(7FE1,0010): rule private" in msg and "(7FE1,1001): rule private" in msg
    assert "DigitalSignaturesSequence (FFFA,FFFA): rule X" in msg
    assert "DOE" not in msg


def test_all_findings_are_listed_and_nested_sequences_searched(tmp_path):
    item = Dataset()
    item.PatientName = PATIENT
    path = write_dicom(tmp_path / "x.dcm", OperatorsName="SMITH^JOHN", ProcedureCodeSequence=Sequence([item]))
    findings = [str(f) for f in phi_findings(read_dicom(path, "x"))]
    assert "OperatorsName (0008,1070): rule X/Z/D (remove, empty or replace with a dummy)" in findings
    assert "ProcedureCodeSequence (0008,1032) > PatientName (0010,0010): rule Z (empty)" in findings


def test_empty_and_dummy_values_pass(tmp_path):
    path = write_dicom(
        tmp_path / "x.dcm", PatientName="", PatientID="", StudyDate="00010101", StationName="ANONYMIZED"
    )
    assert read_dicom_pixels(path, "x").shape == (32, 32)


def test_non_ultrasound_without_burned_in_annotation_passes(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", Modality="OT", BurnedInAnnotation=None, SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    assert read_dicom_pixels(path, "x").shape == (32, 32)


def test_pydicom_warnings_with_raw_values_are_captured(tmp_path, capfd, caplog):
    # An invalid UID holding a name: pydicom warns quoting the value.
    path = write_dicom(tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(0x00200052, "UI", "DOE.JANE.1970")  # FrameOfReferenceUID, invalid
        ds.save_as(path)
    capfd.readouterr()
    caplog.clear()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        with pytest.raises(PHIError) as err:
            read_dicom_pixels(path, "x")
    out, errout = capfd.readouterr()
    assert "FrameOfReferenceUID (0020,0052): rule U" in str(err.value)
    assert not [w for w in escaped if "DOE" in str(w.message)]
    assert "DOE" not in out + errout + caplog.text + str(err.value)
    assert "pydicom reported" in caplog.text  # the count reaches the site's own log


def test_not_a_dicom_file(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="not a readable DICOM file"):
        read_dicom_pixels(bad, "x.dcm")


def test_readme_lists_exactly_the_decoded_transfer_syntaxes():
    text = README.read_text()
    section = text.split("<!-- decoded-transfer-syntaxes -->")[1].split("<!-- /decoded-transfer-syntaxes -->")[0]
    listed = dict(re.findall(r"`([0-9.]+)` ([^\n]+)", section))
    assert listed == DECODED_TRANSFER_SYNTAXES


@pytest.mark.parametrize("name", PYDICOM_FILES, ids=os.path.basename)
def test_pydicom_test_files_are_refused_then_pass_after_deidentify(tmp_path, name):
    src = Path(name)
    try:
        read_dicom(src, src.name)
    except PHIError:
        pytest.fail("read_dicom must not judge")
    except DatasetError as exc:
        assert "not a readable DICOM file" in str(exc)  # no File Meta: refused as unreadable
        return
    with pytest.raises(PHIError):
        read_dicom_pixels(src, src.name)  # none of pydicom's files declares de-identification
    result = deidentify_path(src, tmp_path / src.name, attest_no_burned_in=True)
    assert result["files"][0]["remaining"] == []
    out = tmp_path / src.name
    ds = read_dicom(out, src.name)
    assert phi_findings(ds) == []
    if "PixelData" in ds and str(ds.file_meta.get("TransferSyntaxUID", "")) in DECODED_TRANSFER_SYNTAXES:
        try:
            img = read_dicom_pixels(out, src.name)
        except DatasetError as exc:
            assert "cannot be decoded" in str(exc)
        else:
            assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    elif "PixelData" in ds:
        with pytest.raises(DatasetError, match="transfer syntax .* is not decoded"):
            read_dicom_pixels(out, src.name)


def test_jpeg_baseline_is_decoded():
    src = Path(pydicom.data.get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert str(pydicom.dcmread(src).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"
    assert "1.2.840.10008.1.2.4.50" in DECODED_TRANSFER_SYNTAXES


def test_deidentify_cli_on_a_crafted_identifying_file(tmp_path, capsys):
    src = write_dicom(
        tmp_path / "in" / "a.dcm",
        PatientName=PATIENT,
        StudyDescription="DOE Jane breast",
        StudyDate="20240317",
        PatientAge="047Y",
        DeviceSerialNumber="SN-99812",
        StationName="ECHO-3",
        SOPInstanceUID="1.2.840.113619.2.55.3.4",
        _raw={0x60000010: ("US", 32)},
        BurnedInAnnotation=None,
    )
    ds = pydicom.dcmread(src)
    ds.add_new(0x7FE10010, "LO", "GEMS")
    ds.add_new(0x7FE11001, "LO", PATIENT)
    ds.save_as(src)
    # Without the attestation, ultrasound lacking BurnedInAnnotation=NO is still refused: exit 3.
    assert cli_main(["deidentify", str(tmp_path / "in"), str(tmp_path / "out")]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["remaining"] == [
        "BurnedInAnnotation (0028,0301) must be NO for ultrasound (is absent): rule burned-in"
    ]
    assert cli_main(["deidentify", str(src), str(tmp_path / "ok.dcm"), "--attest-no-burned-in-annotation"]) == 0
    assert "DOE" not in capsys.readouterr().out
    assert read_dicom_pixels(tmp_path / "ok.dcm", "ok").shape == (32, 32)
    raw = (tmp_path / "ok.dcm").read_bytes()
    assert b"DOE" not in raw and b"113619" not in raw and b"20240317" not in raw


def test_dataset_with_dicom_rows(tmp_path):
    root = tmp_path / "site"
    write_dicom(root / "images" / "d1.dcm")
    write_dicom(root / "scans" / "study7.dcm")
    (root / "labels.csv").write_text("id,label,split,file\nd1,benign,train,\nd2,normal,train,scans/study7.dcm\n")
    ds = load_dataset(root, tmp_path, CLASSES, 32, ("train",))
    assert ds.split("train").images.shape == (2, 1, 32, 32)


def test_dataset_with_phi_dicom_fails_whole_load(tmp_path):
    root = tmp_path / "site"
    write_dicom(root / "images" / "d1.dcm", PatientName=PATIENT)
    (root / "labels.csv").write_text("id,label,split\nd1,benign,train\n")
    with pytest.raises(PHIError, match=r"images/d1.dcm \(labels.csv line 2\): .*PatientName \(0010,0010\)") as err:
        load_dataset(root, tmp_path, CLASSES, 32, ("train",))
    assert "DOE" not in str(err.value)


def test_every_bad_file_is_reported_in_one_check(tmp_path):
    root = tmp_path / "site"
    write_dicom(root / "images" / "d1.dcm", PatientName=PATIENT)
    write_dicom(root / "images" / "d2.dcm")
    write_dicom(root / "images" / "d3.dcm", BurnedInAnnotation=None)
    (root / "images" / "d4.dcm").write_bytes(b"junk")
    (root / "labels.csv").write_text("id,label,split\nd1,benign,train\nd2,normal,train\nd3,benign,train\nd4,benign,train\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(root, tmp_path, CLASSES, 32, ("train",))
    msg, public = str(err.value), err.value.public
    assert msg.startswith("3 of 4 images refused")
    for line in (2, 4, 5):
        assert f"labels.csv line {line}" in msg and f"labels.csv line {line}" in public
    assert "line 3" not in public
    assert str(tmp_path) not in public and "d1" not in public
