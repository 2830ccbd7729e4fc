#!/usr/bin/env python
"""Cost of the DICOM de-identification gate and of the privacy ledger, with baselines
measured in the same run.

    python benchmarks/privacy_gate.py [--files 200] [--rounds 50]

* gate: per-file time of `dicom.read_dicom` + `phi_findings` (the PS3.15 allow-list over
  the whole file) and of `read_dicom_pixels` (gate + decode), against plain
  `pydicom.dcmread` of the same file (the baseline every reader pays).
* ledger: time of `PrivacyLedger.reserve` (lock, verify the hash chain, RDP epsilon of the
  whole history, append + fsync) after N rounds, against one `epsilon_for` of one round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _us_file(path: Path, size: int = 512):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(None)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(None), generate_uid(None)
    ds.Modality, ds.PatientIdentityRemoved, ds.DeidentificationMethod, ds.BurnedInAnnotation = "US", "YES", "x", "NO"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(size * size) % 251).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _per_file(fn, files, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for f in files:
            fn(f)
    return (time.perf_counter() - start) / (repeat * len(files)) * 1e3


def bench_gate(n: int) -> dict:
    import pydicom
    from fedcare_workloads.dicom import phi_findings, read_dicom, read_dicom_pixels

    tmp = Path(tempfile.mkdtemp())
    files = [_us_file(tmp / f"{i}.dcm") for i in range(max(1, n // 10))]
    repeat = max(1, n // len(files))
    base = _per_file(lambda f: pydicom.dcmread(f), files, repeat)
    gate = _per_file(lambda f: phi_findings(read_dicom(f, "f")), files, repeat)
    full = _per_file(lambda f: read_dicom_pixels(f, "f"), files, repeat)
    return {"files": len(files) * repeat, "dcmread_ms": round(base, 3), "gate_ms": round(gate, 3),
            "gate_and_decode_ms": round(full, 3), "gate/dcmread": round(gate / base, 2)}


def bench_ledger(rounds: int) -> dict:
    from fedcare_workloads.ledger import Budget, PrivacyLedger, epsilon_for

    ledger = PrivacyLedger(Path(tempfile.mkdtemp()), "bench")
    ledger.set_budget(1e6, 1e-5, "bench")
    epsilon_for([(1.1, 0.05, 60)], 1e-5)  # import / warm-up
    t = time.perf_counter()
    for _ in range(5):
        epsilon_for([(1.1, 0.05, 60)], 1e-5)
    one = (time.perf_counter() - t) / 5 * 1e3
    times = []
    for r in range(rounds):
        t = time.perf_counter()
        ledger.reserve("run", r, 1.1, 0.05, 60, 1e-5, "site", Budget(1e6, 1e-5))
        times.append((time.perf_counter() - t) * 1e3)
    return {"rounds": rounds, "epsilon_for_one_ms": round(one, 1), "reserve_first_ms": round(times[0], 1),
            "reserve_last_ms": round(times[-1], 1), "reserve_last/epsilon_for": round(times[-1] / one, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    print(json.dumps({"dicom_gate": bench_gate(args.files), "privacy_ledger": bench_ledger(args.rounds)}, indent=2))


if __name__ == "__main__":
    main()
