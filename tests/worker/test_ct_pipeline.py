"""A CT series through the analysis task, in this process, against a real database and the trained
demo bundles: the 3D model reads the whole series, its measurements are stored and its mask file
lines up with the SOP instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from clinic.ai.models import AIRead, AnalysisJob, JobStatus
from clinic.ai.service import request_analysis
from clinic.db import unit_of_work
from clinic.imaging.models import Study
from inference.demo.ct_phantoms import CTPhantom, synth_ct
from inference.demo.ct_train import CT_MODEL_ID, CT_MODEL_VERSION
from inference.volume import dice
from integrations.dicom.synthetic import build_ct_series
from tests.worker.conftest import Stack, make_stack, phantom_radiograph
from worker.tasks import InputRef, WorkerContext, analyse_study, plan_reads
from worker.volumes import plan_series_reads

#: The working grid of the model: no resampling, so the test stays short.
SPACING = (2.5, 1.4, 1.4)


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, demo_models_dir: Path) -> Stack:
    return make_stack(request, tmp_path, "embedded", demo_models_dir, series_quiet_seconds=3600)


@pytest.fixture(scope="module")
def phantom() -> CTPhantom:
    return synth_ct(
        np.random.default_rng(21),
        shape=(32, 256, 256),
        spacing=SPACING,
        nodule_diameters_mm=[15.0],
        juxtapleural_fraction=0.0,
    )


def _series(volume: np.ndarray, **options: object) -> list[Dataset]:
    return build_ct_series(volume, SPACING, patient_id="CT-W1", patient_name="PHANTOM^CT", **options)  # type: ignore[arg-type]


def _job_for(stack: Stack, study_uid: str) -> int:
    with unit_of_work(stack.session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return request_analysis(session, study, "inference.cpu").id


def test_the_largest_ct_series_is_segmented_and_the_mask_lines_up(stack: Stack, phantom: CTPhantom) -> None:
    main = _series(phantom.volume, series_number=3)
    study_uid = str(main[0].StudyInstanceUID)
    scout = _series(phantom.volume[:4], study_uid=study_uid, series_number=1)  # fewer slices: not read
    for ds in [*scout, *main[::-1]]:  # stored out of order, as a modality may send them
        stack.store(ds)
    context = WorkerContext(stack.settings)
    job_id = _job_for(stack, study_uid)
    assert analyse_study(context, job_id) == "done"
    assert analyse_study(context, job_id) == "skipped"

    with unit_of_work(stack.session_factory) as session:
        (read,) = session.scalars(select(AIRead)).all()
        assert (read.model_id, read.model_version, read.job_id) == (CT_MODEL_ID, CT_MODEL_VERSION, job_id)
        assert read.series_uid == main[0].SeriesInstanceUID
        assert read.is_synthetic and read.disclaimer == "synthetic demo model — not for clinical use"
        (finding,) = read.findings
        assert finding.code == "lung_nodule" and finding.positive and finding.urgency == 1  # ≥ 8 mm: urgent
        measured = {m.code: (m.value, m.unit, m.finding_code) for m in read.measurements}
        key_uid, mask_path = read.sop_instance_uid, read.mask_path
    assert measured["nodule_count"] == (1.0, "{count}", "lung_nodule")
    assert measured["largest_diameter"][1:] == ("mm", "lung_nodule")
    assert measured["largest_diameter"][0] == pytest.approx(phantom.nodules[0].diameter_mm, rel=0.15)
    truth_mm3 = phantom.nodule_volume_mm3(1)
    assert measured["total_volume"][1] == "mm3"
    assert measured["total_volume"][0] == pytest.approx(truth_mm3, rel=0.3)

    assert mask_path == f"results/{study_uid}/{CT_MODEL_ID}-{CT_MODEL_VERSION}-mask.npz"
    with np.load(stack.settings.resolved_data_dir / mask_path, allow_pickle=False) as saved:
        mask, uids = saved["mask"], [str(u) for u in saved["sop_instance_uids"]]
    assert mask.dtype == np.uint8 and mask.shape == phantom.labels.shape and set(np.unique(mask)) == {0, 1}
    assert sorted(uids) == sorted(ds.SOPInstanceUID for ds in main)
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(main)}  # the phantom's slice of each UID
    truth = np.stack([phantom.labels[slice_of[uid]] == 1 for uid in uids])
    assert dice(mask > 0, truth) >= 0.8, "the mask's frames must follow their SOP instance UIDs"
    assert truth[uids.index(key_uid)].any(), "the read points at a slice through the nodule"
    assert not list((stack.settings.results_dir / study_uid).glob(".*")), "no temporary file left"


def test_an_inconsistent_series_fails_the_job_with_its_reason(stack: Stack, phantom: CTPhantom) -> None:
    datasets = _series(phantom.volume[:8])
    odd = _series(phantom.volume[:1, :128, :128], study_uid=str(datasets[0].StudyInstanceUID))[0]
    odd.SeriesInstanceUID = datasets[0].SeriesInstanceUID  # one slice of another size in the series
    odd.ImagePositionPatient = [0, 0, 100]
    for ds in [*datasets, odd]:
        stack.store(ds)
    job_id = _job_for(stack, str(datasets[0].StudyInstanceUID))
    assert analyse_study(WorkerContext(stack.settings), job_id) == "failed"
    with unit_of_work(stack.session_factory) as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None and job.status == JobStatus.FAILED
        assert CT_MODEL_ID in job.error and "mixed sizes" in job.error
        assert datasets[0].SeriesInstanceUID in job.error
        assert session.scalars(select(AIRead)).all() == []


def test_planning_splits_2d_instances_from_3d_series(stack: Stack) -> None:
    registry = WorkerContext(stack.settings).registry()

    def ref(series: str, n: int, modality: str = "CT", body_part: str = "CHEST", view: str = "") -> InputRef:
        return InputRef(modality, body_part, view, f"{series}.{n}", f"{series}/{n}.dcm", series)

    inputs = [
        *(ref("1.1", n) for n in range(3)),
        *(ref("1.2", n, body_part="") for n in range(5)),  # no body part: accepted
        *(ref("1.3", n, body_part="HEAD") for n in range(9)),  # a head series is not for this model
        ref("1.4", 0, modality="DX", view="PA"),
    ]
    ((model_3d, series),) = plan_series_reads(registry, inputs)
    assert model_3d.model_id == CT_MODEL_ID and series.series_uid == "1.2" and len(series.instances) == 5
    assert [(m.model_id, r.series_uid) for m, r in plan_reads(registry, inputs)] == [("cxr-demo", "1.4")]


def test_a_radiograph_study_is_still_read_by_the_2d_model_only(stack: Stack) -> None:
    study_uid = stack.store(phantom_radiograph(seed=5))
    assert analyse_study(WorkerContext(stack.settings), _job_for(stack, study_uid)) == "done"
    with unit_of_work(stack.session_factory) as session:
        (read,) = session.scalars(select(AIRead)).all()
        assert read.model_id == "cxr-demo" and read.mask_path == "" and read.measurements == []
        assert read.series_uid != ""  # the series of the instance it read
