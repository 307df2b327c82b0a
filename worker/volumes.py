"""3D reads: a segmentation model reads a whole series (the worker's part; the model is inference's).

Planning works per series: among the study's series that a volumetric model's routing accepts
(modality, body part), it reads the one with the most instances (the thin-slice reconstruction,
not a scout or a dose report), all of its instances in the study's order; ``load_volume`` then
orders them by position. The mask is written by :func:`worker.tasks.save_mask` next to the heatmaps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from clinic.ai.service import ReadIn
from clinic.settings import Settings
from worker.tasks import InputRef, model_faults, to_read_in

if TYPE_CHECKING:
    from inference.registry import ModelRegistry
    from inference.segmentation import SegmentationModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesRef:
    """One series of the study as a 3D model's input: its instances in the study's order."""

    series_uid: str
    instances: tuple[InputRef, ...]


def plan_series_reads(
    registry: ModelRegistry, inputs: Sequence[InputRef]
) -> list[tuple[SegmentationModel, SeriesRef]]:
    """Each volumetric model the registry selects for a series of the study, with the largest such
    series (the first of equal size, in the study's order)."""
    series: dict[str, list[InputRef]] = {}
    for ref in inputs:
        series.setdefault(ref.series_uid, []).append(ref)
    best: dict[tuple[str, str], tuple[SegmentationModel, SeriesRef]] = {}
    for series_uid, refs in series.items():
        first = refs[0]
        found = registry.select(first.modality, body_part=first.body_part, reason=first.reason)
        for model in found:
            if not model.is_volumetric:
                continue
            key = (model.model_id, model.version)
            if key not in best or len(refs) > len(best[key][1].instances):
                best[key] = (cast("SegmentationModel", model), SeriesRef(series_uid, tuple(refs)))
    return list(best.values())


def read_series(
    settings: Settings,
    job_id: int,
    study_uid: str,
    done: set[tuple[str, str]],
    plan: Iterable[tuple[SegmentationModel, SeriesRef]],
) -> tuple[list[ReadIn], list[str]]:
    """Run every planned 3D model; permanent faults become reasons, transient ones raise."""
    from inference.dicom_io import load_volume

    reads: list[ReadIn] = []
    errors: list[str] = []
    volumes: dict[str, Any] = {}  # one series may feed several models: load it once
    for model, series in plan:
        if (model.model_id, model.version) in done:
            log.info("job %s: %s %s already read study %s", job_id, model.model_id, model.version, study_uid)
            continue
        with model_faults(job_id, model, errors, f"series {series.series_uid}", name_file=True):
            if series.series_uid not in volumes:
                paths = [settings.resolved_data_dir / ref.file_path for ref in series.instances]
                volumes[series.series_uid] = load_volume(paths)
            result = model.predict_volume(volumes[series.series_uid])
            reads.append(to_read_in(settings, study_uid, result, series.instances[0]))
            log.info(
                "job %s: %s %s read series %s (%d slices) in %.0f ms",
                job_id,
                model.model_id,
                model.version,
                series.series_uid,
                len(series.instances),
                result.inference_ms,
            )
    return reads, errors
