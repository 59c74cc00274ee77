"""medseg: 3D medical image segmentation with MONAI and PyTorch Lightning."""

__version__ = "0.1.0"
