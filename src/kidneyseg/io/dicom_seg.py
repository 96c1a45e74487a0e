"""DICOM Segmentation output with highdicom, for a prediction made from a DICOM series.

Two segments, "Kidney" (SNOMED CT 64033007, category Anatomical Structure 91723000) and "Kidney
tumor" (Neoplasm 108369006, category Morphologically Abnormal Structure 49755003, in the kidney),
the algorithm identified by name and version, one binary frame per source slice that holds a
segment, each frame referencing its source instance. Needs the ``dicom`` extra (highdicom).

Anonymised exports often have empty SOP, Series and Study Instance UIDs in their datasets:

* an empty SOPInstanceUID or SOPClassUID is taken from the file meta (MediaStorageSOPInstanceUID,
  MediaStorageSOPClassUID), which the standard requires to be the same values;
* an empty SeriesInstanceUID or StudyInstanceUID has no such source. The SEG then gets stand-in
  UIDs derived from the source instances (the same ones on every run), with a warning: a PACS will
  not file it with the original study. Without any SOP Instance UID at all the SEG is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from kidneyseg.errors import InvalidInputError, UsageError
from kidneyseg.io.atomic import atomic_write
from kidneyseg.io.dicom import DicomSeries
from kidneyseg.io.volume import Volume

SEG_SUFFIX = ".seg.dcm"


def write_dicom_seg(labels: np.ndarray, volume: Volume, series: DicomSeries, path: str | Path,
                    version: str) -> Path:
    """Write the canonical (X, Y, Z) ``labels`` predicted from ``volume`` (read from ``series``) as a
    DICOM SEG at ``path``, atomically."""
    hd, pydicom, codes = require_dicom_extra()
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    _fill_uids(datasets, series)
    file_order = volume.to_file_order(np.asarray(labels, dtype=np.uint8))  # (columns, rows, slices)
    if file_order.shape != (int(datasets[0].Columns), int(datasets[0].Rows), len(datasets)):
        raise ValueError(f"labels {file_order.shape} do not match the series ({len(datasets)} slices of "
                         f"{datasets[0].Rows} x {datasets[0].Columns})")
    frames = np.ascontiguousarray(np.transpose(file_order, (2, 1, 0)))  # (slices, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(name="kidneyseg", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    automatic = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    segments = [
        hd.seg.SegmentDescription(segment_number=1, segment_label="Kidney",
                                  segmented_property_category=codes.SCT.AnatomicalStructure,
                                  segmented_property_type=codes.SCT.Kidney, algorithm_type=automatic,
                                  algorithm_identification=algorithm),
        hd.seg.SegmentDescription(segment_number=2, segment_label="Kidney tumor",
                                  segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                                  segmented_property_type=codes.SCT.Neoplasm, algorithm_type=automatic,
                                  algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Kidney]),
    ]
    source_uids = [d.SOPInstanceUID for d in datasets]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=_uid(pydicom, ["seg-series", *source_uids, version]),
        series_number=9901, sop_instance_uid=_uid(pydicom, ["seg-instance", *source_uids, version]),
        instance_number=1, manufacturer="kidneyseg", manufacturer_model_name="kidneyseg two-stage 3D U-Net",
        software_versions=version, device_serial_number="none", series_description="kidneyseg kidney and tumour",
        omit_empty_frames=True)
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _fill_uids(datasets: list, series: DicomSeries) -> None:
    from pydicom.uid import generate_uid

    for d in datasets:
        if not d.get("SOPInstanceUID"):
            d.SOPInstanceUID = d.file_meta.get("MediaStorageSOPInstanceUID", "")
        if not d.get("SOPClassUID"):
            d.SOPClassUID = d.file_meta.get("MediaStorageSOPClassUID", "")
    missing = [p.name for p, d in zip(series.files, datasets, strict=True) if not d.SOPInstanceUID]
    if missing:
        raise InvalidInputError(f"{len(missing)} slice(s) have no SOP Instance UID, in the dataset or the file meta "
                                f"(e.g. {missing[0]}): a DICOM SEG cannot reference them", series.files[0].parent)
    sources = [str(d.SOPInstanceUID) for d in datasets]
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID"):
        if any(not d.get(keyword) for d in datasets):
            stand_in = generate_uid(entropy_srcs=[keyword, *sources])
            warnings.warn(f"{series.files[0].parent}: the series has no {keyword}; the DICOM SEG uses {stand_in}, "
                          "derived from its instances, so a PACS will not file it with the original study",
                          stacklevel=3)
            for d in datasets:
                setattr(d, keyword, d.get(keyword) or stand_in)


def _uid(pydicom, sources: list[str]) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=sources)


def require_dicom_extra():
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise UsageError("DICOM-SEG output needs the 'dicom' extra: pip install 'kidneyseg[dicom]'") from exc
    return hd, pydicom, codes
