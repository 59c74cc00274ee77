"""DICOM-SEG output: a series' label map as a highdicom Segmentation that references the slices it was computed from,
one segment per foreground class, for a radiologist's viewer or a PACS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from medseg import __version__
from medseg.io.dicom_series import read_headers, series_label
from medseg.io.dicom_volume import complete_series
from medseg.io.nifti import NiftiImage

# The recipe names classes in words, not codes: every segment gets the generic "Tissue" code and the class name as its label.
GENERIC_PROPERTY = codes.SCT.Tissue
# Puts the segmentation just after its source in a viewer's series list.
SERIES_NUMBER_OFFSET = 1000
# Where the label map's (columns, rows, slices) voxels go as DICOM frames: (slices, rows, columns).
SLICES_ROWS_COLUMNS = [2, 1, 0]


@dataclass(frozen=True)
class Algorithm:
    """What made a segmentation, as the DICOM-SEG records it: the recipe's class names (background first) and the
    checkpoint files (their names only: paths can hold a user's folders)."""

    class_names: tuple[str, ...]
    checkpoints: tuple[str, ...]

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name="medseg", family=codes.DCM.ArtificialIntelligence, version=__version__,
            parameters={"checkpoint": ", ".join(self.checkpoints)},
        )

    def segments(self) -> list[hd.seg.SegmentDescription]:
        """Return one segment per foreground class, numbered by its label value."""
        identification = self.identification()
        return [
            hd.seg.SegmentDescription(
                segment_number=value, segment_label=name, segmented_property_category=GENERIC_PROPERTY,
                segmented_property_type=GENERIC_PROPERTY, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification, tracking_uid=hd.UID(), tracking_id=name,
            )
            for value, name in enumerate(self.class_names[1:], start=1)
        ]


def segmentation(labels: np.ndarray, reference: NiftiImage, name: str, series: Sequence[Path], algorithm: Algorithm) -> hd.seg.Segmentation:
    """Return the DICOM-SEG of a label map on a series' own grid (``read_series``'s voxels and RAS affine).

    highdicom matches each frame to the source slice at its position, so frames reference their slices whatever order
    the files are in; frames without any foreground are left out.
    """
    sources = read_headers(series, series_label(name, series))
    complete_series(sources)  # what the series left out, as reading it filled in (and said so)
    first = sources[0]
    volume = hd.Volume(
        labels, reference.affine, coordinate_system="PATIENT", frame_of_reference_uid=first.FrameOfReferenceUID,
        from_reference_convention="RAS",
    ).permute_spatial_axes(SLICES_ROWS_COLUMNS)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=algorithm.segments(),
        series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"medseg {first.get('SeriesDescription') or 'segmentation'}"[:64],
        omit_empty_frames=True,
    )
