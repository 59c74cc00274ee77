"""How a requested precision resolves on each kind of device, the switch that forces the CPU's answer, and the
precision inference runs a trained model at."""

from __future__ import annotations

import pytest

from medseg import precision as precision_module
from medseg.errors import MedsegError
from medseg.precision import CPU_BF16_ENV, inference_precision, resolve_precision


@pytest.mark.parametrize(
    "requested, device_type, native_bf16, expected",
    [
        ("16-mixed", "cpu", True, "bf16-mixed"),
        ("16-mixed", "cpu", False, "32-true"),
        ("bf16-mixed", "cpu", False, "bf16-mixed"),
        ("32-true", "cpu", True, "32-true"),
        ("16-mixed", "cuda", False, "16-mixed"),
    ],
)
def test_precision_resolution(monkeypatch, requested, device_type, native_bf16, expected):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native_bf16)
    precision, reason = resolve_precision(requested, device_type)
    assert precision == expected and expected in reason


@pytest.mark.parametrize("forced, expected", [("1", "bf16-mixed"), ("0", "32-true")])
def test_the_switch_forces_how_16_mixed_resolves_on_a_cpu_and_the_log_says_so(monkeypatch, forced, expected):
    monkeypatch.setattr(precision_module.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: forced == "0")  # the opposite of the switch
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    precision, reason = resolve_precision("16-mixed", "cpu")
    assert precision == expected and f"({CPU_BF16_ENV} set)" in reason


def test_without_the_switch_onednn_is_asked(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    for native in (True, False):
        monkeypatch.setattr(precision_module.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        assert precision_module.cpu_has_native_bf16() is native


def test_a_bad_switch_value_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(MedsegError, match=rf"^{CPU_BF16_ENV}='yes': use 1 .*, 0 .* or leave it unset$"):
        resolve_precision("16-mixed", "cpu")


def test_the_switch_leaves_gpus_and_explicit_precisions_alone(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_precision("16-mixed", "cuda")[0] == "16-mixed" and resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"


@pytest.mark.parametrize("trained", ["32-true", "16-mixed", "bf16-mixed"])
def test_cpu_inference_runs_bf16_only_for_mixed_precision_models_on_a_bf16_cpu(cpu_bf16, trained):
    expected = "bf16-mixed" if cpu_bf16 and trained != "32-true" else "32-true"
    assert inference_precision(trained, "cpu") == expected
