"""DICOM input: the de-identification gate and pixel conversion."""

from pathlib import Path

import numpy as np
import pytest
from fedcare_workloads.data import DatasetError, load_dataset
from fedcare_workloads.dicom import PHIError, phi_findings, read_dicom_pixels
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

CLASSES = ("normal", "benign", "malignant")
PATIENT = "DOE^JANE"


def write_dicom(path: Path, pixels: np.ndarray | None = None, photometric="MONOCHROME2", **attrs) -> Path:
    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 4096 if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientIdentityRemoved = "YES"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attrs.items():
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


@pytest.mark.parametrize(
    ("attrs", "tag"),
    [
        ({"PatientName": PATIENT}, "PatientName (0010,0010)"),
        ({"PatientBirthDate": "19700101"}, "PatientBirthDate (0010,0030)"),
        ({"PatientID": "MRN-483920"}, "PatientID (0010,0020)"),
        ({"PatientAddress": "1 rue de la Paix, Paris"}, "PatientAddress (0010,1040)"),
        ({"InstitutionName": "CHU Rouen"}, "InstitutionName (0008,0080)"),
        ({"OtherPatientIDsSequence": Sequence([Dataset()])}, "OtherPatientIDsSequence (0010,1002)"),
    ],
)
def test_phi_is_refused_naming_the_tag_but_never_the_value(tmp_path, attrs, tag):
    path = write_dicom(tmp_path / "x.dcm", **attrs)
    with pytest.raises(PHIError) as err:
        read_dicom_pixels(path, "images/x.dcm (labels.csv line 2)")
    msg = str(err.value)
    assert tag in msg and "images/x.dcm (labels.csv line 2)" in msg and "was not loaded" in msg
    for value in attrs.values():
        if isinstance(value, str):
            assert value not in msg
            assert value.split("^")[0] not in msg


def test_person_names_anywhere_and_nested_sequences_are_found(tmp_path):
    item = Dataset()
    item.PatientName = PATIENT  # nested inside a sequence item
    path = write_dicom(tmp_path / "x.dcm", OperatorsName="SMITH^JOHN", ReferencedStudySequence=Sequence([item]))
    with pytest.raises(PHIError) as err:
        read_dicom_pixels(path, "x")
    msg = str(err.value)
    assert "OperatorsName (0008,1070)" in msg
    assert "ReferencedStudySequence (0008,1110) > PatientName (0010,0010)" in msg
    assert "SMITH" not in msg and "DOE" not in msg


def test_private_tags_and_burned_in_annotation_are_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", BurnedInAnnotation="YES")
    with pytest.raises(PHIError, match=r"BurnedInAnnotation \(0028,0301\) = YES"):
        read_dicom_pixels(path, "x")
    ds = Dataset()
    ds.add_new(0x00091001, "LO", "vendor secret")
    assert phi_findings(ds) == ["private tag (0009,1001)"]


def test_empty_identifying_attributes_pass(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", PatientName="", PatientID="", PatientBirthDate="")
    assert read_dicom_pixels(path, "x").shape == (32, 32)


def test_not_a_dicom_file(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="not a readable DICOM file"):
        read_dicom_pixels(bad, "x.dcm")


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
