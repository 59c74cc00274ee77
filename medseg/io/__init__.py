"""Reading and writing images for every stage: NIfTI (``nifti``: one check of a volume, one affine tolerance),
DICOM series (``dicom_series``: finding and naming them; ``dicom_volume``: a series as a NIfTI image) and DICOM-SEG
output (``dicom_seg``).

Names load on first use: the DICOM ones need the "dicom" extra (pip install "medseg[dicom]").
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "dicom_seg": ["Algorithm", "segmentation"],
    "dicom_series": ["find_series"],
    "dicom_volume": ["read_series"],
    "nifti": ["NiftiImage", "case_name", "is_nifti", "load_header", "open_scan", "read_voxels", "same_grid"],
})
