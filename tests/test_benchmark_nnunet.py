"""The pieces of the comparison with nnU-Net (``benchmarks.nnunet_comparison``, ``benchmarks.nnunet``) that run
without training: data in nnU-Net's layout, the CPU budget, the table and the plot."""

from __future__ import annotations

import ast
import json
import math
from types import SimpleNamespace

import nibabel as nib
import numpy as np
from matplotlib.container import ErrorbarContainer

from benchmarks.nnunet import to_nnunet_images, to_nnunet_raw
from benchmarks.nnunet_comparison import (BUDGET, NNUNET, NNUNET_CLASS, RECORD, THREADS, TRAINER, TRAINER_SOURCE, TUTORIAL,
                                          CpuBudget, markdown, medseg_training_command, plot, summary_rows)
from medseg.data.formats import read_dataset


def fake_run(seed: int, organ: float, vessel: float) -> dict:
    return {"seed": seed, "cpu_seconds": 120.4, "steps": 7,
            "scores": {"organ": {"dice": organ, "hd95_mm": 3.0}, "vessel": {"dice": vessel, "hd95_mm": math.nan}}}


CONTENDERS = {
    TUTORIAL: {"status": "ran", "runs": [fake_run(0, 0.9, 0.2), fake_run(1, 0.8, 0.4)]},
    NNUNET_CLASS: {"status": "failed: python -m medseg.train (exit 1)"},
    NNUNET: {"status": "ran", "runs": [fake_run(0, 0.95, 0.6)]},
}


def test_the_table_gives_each_class_its_mean_and_seed_range_and_says_why_a_contender_did_not_run():
    tutorial, placeholder, nnunet = summary_rows(CONTENDERS)
    assert tutorial["contender"] == TUTORIAL and tutorial["Dice organ"] == "0.850 (0.800-0.900)"
    assert tutorial["Dice vessel"] == "0.300 (0.200-0.400)" and tutorial["mean Dice"] == "0.575 (0.550-0.600)"
    assert tutorial["HD95 organ mm"] == "3.0" and tutorial["HD95 vessel mm"] == "n/a"
    assert tutorial["seeds"] == "0 1" and tutorial["CPU s"] == "120 120" and tutorial["steps"] == "7 7"
    assert placeholder["contender"] == f"{NNUNET_CLASS}: failed: python -m medseg.train (exit 1)" and placeholder["Dice organ"] == ""
    assert nnunet["Dice vessel"] == "0.600" and list(nnunet) == list(tutorial)


def test_the_plot_has_a_bar_per_class_and_contender_that_ran_with_the_seed_range_as_error_bar():
    axes = plot(CONTENDERS).axes[0]
    heights = sorted(round(bar.get_height(), 3) for bar in axes.patches)
    assert heights == [0.3, 0.6, 0.85, 0.95]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["organ", "vessel"]
    tutorial_range = [c for c in axes.containers if isinstance(c, ErrorbarContainer)][0].lines[2][0].get_segments()
    np.testing.assert_allclose([segment[:, 1] for segment in tutorial_range], [[0.8, 0.9], [0.2, 0.4]])  # lowest to highest seed


def test_the_cpu_budget_stops_medseg_training_once_spent_and_writes_the_final_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET, "0")
    monkeypatch.setenv(RECORD, str(tmp_path / "record.json"))
    saved = []
    trainer = SimpleNamespace(should_stop=False, global_step=3, current_epoch=0, save_checkpoint=saved.append)
    module = SimpleNamespace(recipe=SimpleNamespace(network="UNet", network_kwargs={"channels": [16, 32]}))
    budget = CpuBudget()
    budget.on_train_start(trainer, module)
    budget.on_train_batch_end(trainer, module, None, {"image": np.zeros((2, 1, 8, 8, 4))}, 0)
    assert trainer.should_stop
    budget.on_train_end(trainer, module)
    record = json.loads((tmp_path / "record.json").read_text())
    assert saved == [tmp_path / "final.ckpt"] and record["checkpoint"] == str(tmp_path / "final.ckpt")
    assert record["steps"] == 3 and record["batch_shape"] == [2, 1, 8, 8, 4] and record["cpu_seconds"] >= 0
    assert record["network"] == "UNet"  # which network trained: the planner's choice may change


def test_medseg_trains_under_the_budget_with_the_contenders_own_options(tmp_path):
    command = medseg_training_command(tmp_path / "train", tmp_path / "cache", tmp_path / "out", 1, ["--model.network=DynUNet"])
    assert command[1:3] == ["-m", "medseg.train"] and command[-1] == "--model.network=DynUNet"
    assert "--trainer.callbacks+=benchmarks.nnunet_comparison.CpuBudget" in command and "--seed_everything=1" in command


def test_the_nnunet_trainer_is_valid_python_that_nnunet_finds_by_name_and_takes_the_benchmarks_thread_count():
    tree = ast.parse(TRAINER_SOURCE)
    assert TRAINER in [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert f'torch.set_num_threads(int(os.environ["{THREADS}"]))' in TRAINER_SOURCE  # nnU-Net sets every core's on a CPU


def test_a_dataset_converts_to_nnunet_layout_and_its_images_keep_their_case_names(demo_root, tmp_path):
    spec = read_dataset(demo_root)
    folder = to_nnunet_raw(spec, tmp_path / "raw", 935, "Demo")
    assert folder.name == "Dataset935_Demo"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir())[:2] == ["Demo_000_0000.nii.gz", "Demo_001_0000.nii.gz"]
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "organ": 1, "lesion": 2} and description["numTraining"] == len(spec.cases)
    np.testing.assert_array_equal(nib.load(folder / "labelsTr" / "Demo_002.nii.gz").get_fdata(), nib.load(spec.cases[2].label).get_fdata())
    images = to_nnunet_images(spec, tmp_path / "images")
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{case.name}_0000.nii.gz" for case in spec.cases)


def test_the_report_shows_the_table_what_each_contender_ran_on_and_the_failures():
    runs = {"torch": "2.13.0+cpu", "threads": 2, "wall_seconds": 200.0, "network": "UNet"}
    contenders = {**CONTENDERS, TUTORIAL: {"status": "ran", "runs": [{**run, **runs} for run in CONTENDERS[TUTORIAL]["runs"]]},
                  NNUNET: {"status": "failed: nnUNetv2_train (exit 1)", "runs": []}}
    settings = {"train_cases": 5, "test_cases": 2, "data_seed": 0, "shape": [64, 64, 20], "cpu_seconds": 120.0, "seeds": [0, 1]}
    text = markdown({"settings": settings, "contenders": contenders, "load_average_before_after": [1.0] * 6, "seconds": 600.0})
    assert "| medseg, tutorial UNet | 0.850 (0.800-0.900) |" in text
    assert f"| {NNUNET_CLASS}: failed: python -m medseg.train (exit 1) |" in text
    assert f"{TUTORIAL}: UNet, torch 2.13.0+cpu, 2 thread(s), 200 200 s of wall time" in text
    assert text.endswith(f"Failures:\n- {NNUNET_CLASS}: failed: python -m medseg.train (exit 1)\n- {NNUNET}: failed: nnUNetv2_train (exit 1)")


def test_the_presets_table_puts_medsegs_plan_and_peaks_beside_nnunets_target_and_plan():
    from benchmarks.planning import nnunet_command
    from benchmarks.presets import PLANS, rows

    medseg = {"patch_size": [192, 160, 96], "batch_size": 2, "estimated_peak_gib": 6.9, "budget_gib": 7.2, "measured_peak_gib": None}
    default, preset = rows({"default": {"medseg": medseg},
                            "M": {"medseg": {**medseg, "measured_peak_gib": 7.4}, "nnunet": {"patch_size": [160, 160, 96], "batch_size": 2}}})
    assert default["nnU-Net target / measured GB"] == "8 / n/a" and default["measured GiB"] == "n/a" and default["nnU-Net batch"] == "n/a"
    assert preset["nnU-Net target / measured GB"] == "8 / 9.1" and preset["measured GiB"] == 7.4
    assert preset["medseg patch (x,y,z)"] == "192x160x96" and preset["nnU-Net patch (x,y,z)"] == "160x160x96"
    # each preset is planned by nnU-Net's own planner of that name, which writes its own plans file
    assert PLANS["L"] == ("resenc", "L", "nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans") and PLANS["default"][2] is None
    assert "-pl" not in nnunet_command(903, False) and nnunet_command(903, False, "nnUNetPlannerResEncL")[4:6] == ["-pl", "nnUNetPlannerResEncL"]
