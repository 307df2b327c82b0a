"""Result objects: how long highdicom takes to build and encode our SR and SEG.

    .venv/bin/python bench/result_objects.py [--slices 120] [--size 512] [--rounds 5]

Builds, in memory, a CT series of ``--slices`` slices of ``--size``² (pydicom's CT_small header,
new UIDs, 2.5 mm apart) with a nodule mask over 15 slices, and a synthetic 2048² chest radiograph,
then times (median of ``--rounds``, after one warm-up):

- the SR of a chest radiograph read (two findings, TID 1501, image library),
- the SR of the CT read referencing its SEG (TID 1411), without and with a TID 1600 image library
  of every slice (the library is off by default for series: this row says why),
- the BINARY SEG of the mask with every frame kept (``omit_empty_frames=False``), and
- encoding each to Part 10 bytes (``integrations.dicom.results.encode``).

Prints a markdown table for docs/benchmarks.md. The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIFinding, AIMeasurement, AIRead  # noqa: E402
from integrations.dicom.results import build_seg, build_sr, encode  # noqa: E402
from integrations.dicom.synthetic import build_cxr_dataset  # noqa: E402


def ct_series(count: int, size: int) -> list[Dataset]:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert isinstance(path, str), "pydicom's CT_small.dcm is missing"
    base = dcmread(path)
    base.Rows = base.Columns = size
    base.PixelData = np.zeros((size, size), np.int16).tobytes()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    x, y, z = (float(v) for v in base.ImagePositionPatient)
    slices: list[Dataset] = []
    for k in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        slices.append(ds)
    return slices


def read_of(source: Dataset, findings: list[AIFinding], numbers: list[AIMeasurement], model: str) -> AIRead:
    read = AIRead(
        model_id=model,
        model_name=f"{model} demo",
        model_version="0.1.0",
        is_synthetic=True,
        disclaimer=SYNTHETIC_DISCLAIMER,
        sop_instance_uid=str(source.SOPInstanceUID),
        series_uid=str(source.SeriesInstanceUID),
        created_at=dt.datetime.now(dt.UTC),
    )
    read.findings, read.measurements = findings, numbers
    return read


T = TypeVar("T")


def timed(fn: Callable[[], T], rounds: int) -> tuple[float, T]:
    result = fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    pixels = np.random.default_rng(0).integers(0, 4096, (2048, 2048), dtype=np.uint16)
    cxr = build_cxr_dataset(pixels, patient_id="BENCH", patient_name="BENCH^CXR", modality="CR")
    cxr_read = read_of(
        cxr,
        [
            AIFinding(
                code="consolidation", label="Consolidation", probability=0.9, threshold=0.5, positive=True
            ),
            AIFinding(
                code="nodule_mass", label="Nodule/mass", probability=0.1, threshold=0.4, positive=False
            ),
        ],
        [],
        "demo-cxr",
    )
    series = ct_series(args.slices, args.size)
    mask = np.zeros((args.slices, args.size, args.size), np.uint8)
    middle = args.slices // 2
    half, third = args.size // 2, args.size // 3
    mask[middle - 7 : middle + 8, half - 12 : half + 12, third : third + 20] = 1
    ct_read = read_of(
        series[0],
        [AIFinding(code="lung_nodule", label="Lung nodule", probability=0.87, threshold=0.5, positive=True)],
        [
            AIMeasurement(
                finding_code="lung_nodule", code="total_volume", label="Volume", value=5e3, unit="mm3"
            )
        ],
        "ct-nodule",
    )

    rows: list[tuple[str, float, int]] = []
    ms, sr = timed(lambda: build_sr(cxr_read, [cxr]), args.rounds)
    rows.append(("SR, chest radiograph (2 findings, image library)", ms, len(encode(sr))))
    ms, seg = timed(lambda: build_seg(ct_read, series, mask), args.rounds)
    seg_bytes = encode(seg)
    rows.append((f"SEG, {args.slices} x {args.size}² BINARY, all frames kept", ms, len(seg_bytes)))
    ms, _ = timed(lambda: encode(seg), args.rounds)
    rows.append(("SEG encode to Part 10 bytes", ms, len(seg_bytes)))
    ms, sr = timed(lambda: build_sr(ct_read, series, segmentation=seg), args.rounds)
    label = f"SR, CT read referencing the SEG ({args.slices} slices, no library)"
    rows.append((label, ms, len(encode(sr))))
    ms, sr = timed(lambda: build_sr(ct_read, series, segmentation=seg, image_library=True), args.rounds)
    rows.append((f"SR, same with a TID 1600 library of {args.slices} slices", ms, len(encode(sr))))
    ms, _ = timed(lambda: encode(sr), args.rounds)
    rows.append(("SR (with library) encode to Part 10 bytes", ms, len(encode(sr))))

    print(f"rounds={args.rounds} (median, after one warm-up)\n")
    print("| Object | ms | bytes |\n|---|---:|---:|")
    for name, ms, size in rows:
        print(f"| {name} | {ms:.1f} | {size:,} |")


if __name__ == "__main__":
    main()
