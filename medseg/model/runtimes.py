"""The window forward of an exported network (``models/model.onnx`` of ``python -m medseg.export``) in ONNX Runtime or
OpenVINO, as a module the predictor calls as it calls a PyTorch network: everything around the forward (windows,
blending, geometry, postprocessing) stays medseg's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.option_values import RUNTIMES

__all__ = ["MeanOfModels", "OnnxRuntimeNetwork", "OpenVinoNetwork", "installed", "require_runtime", "runtime_network"]

# The optional extra each runtime comes with (pyproject.toml)
RUNTIME_EXTRAS = {"onnxruntime": "export", "openvino": "openvino"}
# OpenVINO's CPU precision hint for each medseg precision: "f32" keeps fp32 on CPUs where its default would be bf16
OPENVINO_HINTS = {"32-true": "f32", "bf16-mixed": "bf16", "16-mixed": "f16"}


def installed(module: str) -> bool:
    """Return whether ``module`` (a runtime of an optional extra) imports."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def require_runtime(runtime: str) -> None:
    """Refuse a runtime medseg does not know, or one not installed, in one line naming the extra to install."""
    if runtime not in RUNTIMES:
        raise MedsegError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime != "torch" and not installed(runtime):
        raise MedsegError(f'--runtime {runtime} needs {runtime}, which is not installed: pip install "medseg[{RUNTIME_EXTRAS[runtime]}]"')


class MeanOfModels(nn.Module):
    """The mean of an ensemble's logits as one network: the mean ``medseg.infer`` blends (blending is linear), so that
    an export holds one network for a runtime or a MONAI bundle to run."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.networks[0](image).float()
        for network in self.networks[1:]:
            logits = logits + network(image).float()
        return logits / len(self.networks)


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime: float32 windows in, float32 logits out (on the windows' device)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise MedsegError('--runtime onnxruntime on a GPU needs onnxruntime-gpu: pip install onnxruntime-gpu (or use --device cpu)')
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many as PyTorch's windows use
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input: windows.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(windows.device)


class OpenVinoNetwork(nn.Module):
    """An ONNX model compiled by OpenVINO for the CPU at a precision hint: float32 windows in, float32 logits out."""

    def __init__(self, path: Path, precision: str) -> None:
        super().__init__()
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logits = self.compiled(windows.detach().float().contiguous().cpu().numpy())[0]
        return torch.from_numpy(np.asarray(logits, np.float32)).to(windows.device)


def runtime_network(onnx_file: Path, runtime: str, precision: str, device: torch.device) -> tuple[nn.Module, str]:
    """Return the ONNX model ``onnx_file`` run by ``runtime`` on ``device``, and the precision that runs.

    ONNX Runtime runs the graph as exported (float32). OpenVINO runs it on the CPU at ``precision`` (its bf16 and f16
    hints), which makes "16-mixed" mean fp16 there, as it does on a GPU.
    """
    require_runtime(runtime)
    if not Path(onnx_file).is_file():
        raise MedsegError(f"{onnx_file} does not exist: --runtime {runtime} needs an export folder (python -m medseg.export)")
    if runtime == "onnxruntime":
        return OnnxRuntimeNetwork(onnx_file, device), "32-true"
    if device.type != "cpu":
        raise MedsegError(f"--runtime openvino runs on the CPU here, not {device}: use --device cpu")
    return OpenVinoNetwork(onnx_file, precision), precision
