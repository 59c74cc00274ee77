"""Stand-ins for tests, benchmarks and CPU demos (as Lightning keeps its own in ``lightning.pytorch.demos``): a
simulated GPU that runs out of memory where a real one would, and generated datasets. The library never imports it.

Synthetic DICOM series (the "dicom" extra) are in ``medseg.testing.dicom_series``.
"""

from medseg.testing.datasets import CT_PHANTOMS, write_ct_like, write_ct_phantoms, write_mri_like, write_msd
from medseg.testing.simulated_device import Autotuning, SimulatedDevice, SimulatedOOMCallback

__all__ = [
    "CT_PHANTOMS",
    "Autotuning",
    "SimulatedDevice",
    "SimulatedOOMCallback",
    "write_ct_like",
    "write_ct_phantoms",
    "write_mri_like",
    "write_msd",
]
