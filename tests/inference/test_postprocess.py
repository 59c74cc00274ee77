"""nnU-Net's postprocessing rule on constructed cases: a largest-component step is kept only where it raises the
mean foreground Dice and lowers no class; the decision is written as a plain file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseg.inference.postprocess_command import main
from medseg.inference.postprocessing import Postprocessing, choose_postprocessing
from medseg.testing import write_msd

CLASSES = ("background", "organ", "lesion")


def _truth() -> np.ndarray:
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    labels[14:20, 14:20, 14:20] = 2
    return labels


def _with_blob(labels: np.ndarray, label: int) -> np.ndarray:
    """A prediction that is ``labels`` plus a small false-positive blob of ``label`` far from everything."""
    predicted = labels.copy()
    predicted[20:22, 1:3, 20:22] = label
    return predicted


def test_a_spurious_blob_of_one_class_chooses_that_classes_largest_component():
    truth = _truth()
    cases = [(_with_blob(truth, 1), truth), (truth.copy(), truth)]
    chosen = choose_postprocessing(cases, CLASSES)
    assert chosen.largest_component_classes == ("organ",)
    assert chosen.chosen_on["dice_after"]["organ"] > chosen.chosen_on["dice_before"]["organ"]


def test_with_blobs_of_every_class_all_foreground_together_is_chosen_first():
    truth = _truth()
    both = _with_blob(truth, 1)
    both[1:3, 20:22, 1:3] = 2
    chosen = choose_postprocessing([(both, truth)], CLASSES)
    # foreground as one region: the organ and the lesion are separate, so its largest component drops the lesion:
    # that lowers the lesion's Dice, and the rule refuses it; each class's own largest component is kept instead
    assert not chosen.foreground_largest_component and chosen.largest_component_classes == ("organ", "lesion")
    assert chosen.chosen_on["dice_after"] == {"organ": 1.0, "lesion": 1.0}


def test_touching_classes_with_a_blob_choose_all_foreground_together():
    truth = np.zeros((24, 24, 24), np.uint8)
    truth[4:12, 4:12, 4:12] = 1
    truth[12:16, 4:12, 4:12] = 2  # the lesion touches the organ: one foreground region
    predicted = _with_blob(truth, 2)
    predicted[1:3, 20:22, 1:3] = 1
    chosen = choose_postprocessing([(predicted, truth)], CLASSES)
    assert chosen.foreground_largest_component and chosen.largest_component_classes == ()
    assert chosen.chosen_on["dice_after"] == {"organ": 1.0, "lesion": 1.0}


def test_a_class_that_truly_has_two_parts_is_left_alone():
    truth = _truth()
    truth[20:23, 1:4, 18:21] = 1  # the organ has a second, separate part, which the model finds
    chosen = choose_postprocessing([(truth.copy(), truth)], CLASSES)
    assert not chosen.does_anything and chosen.chosen_on["dice_after"] == chosen.chosen_on["dice_before"]


def test_a_step_that_helps_one_case_but_hurts_a_class_elsewhere_is_refused():
    truth = _truth()
    two_parts = truth.copy()
    two_parts[20:23, 1:4, 18:21] = 1  # in this case the organ's second part is real
    cases = [(_with_blob(truth, 1), truth), (two_parts.copy(), two_parts)]
    chosen = choose_postprocessing(cases, CLASSES)
    before, after = chosen.chosen_on["dice_before"], chosen.chosen_on["dice_after"]
    assert all(after[name] >= before[name] for name in CLASSES[1:])  # never lowers a class, by construction
    assert "organ" not in chosen.largest_component_classes


def test_the_command_writes_the_decision_for_the_datasets_classes(tmp_path, capsys):
    truth = _truth()
    write_msd(tmp_path / "dataset", [(truth.astype(np.float32), truth, np.eye(4))] * 2, {"0": "CT"}, dict(enumerate(CLASSES)))
    (tmp_path / "pred").mkdir()
    for index in range(2):
        nib.save(nib.Nifti1Image(_with_blob(truth, 1), np.eye(4)), tmp_path / "pred" / f"case_{index:03d}.nii.gz")
    output = tmp_path / "cv" / "postprocessing.json"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "dataset"), "--output", str(output)]) == 0
    assert "postprocessing: largest component of organ" in capsys.readouterr().out
    decision = Postprocessing.read(output)
    assert decision.class_names == CLASSES and decision.largest_component_classes == ("organ",) and decision.chosen_on["cases"] == 2


def test_the_command_without_class_names_is_a_one_line_error(tmp_path, capsys):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(_truth(), np.eye(4)), tmp_path / folder / "case.nii.gz")
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 1
    assert capsys.readouterr().err.strip() == f"medseg: error: no class names for {tmp_path / 'gt'}: give the dataset (its dataset.json names the classes)"
    assert not (tmp_path / "pred" / "postprocessing.json").exists()


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a medseg postprocessing file"),
    ('{"version": 7}', "postprocessing version 7 is not 1"),
    ('{"version": 1, "class_names": ["background", "organ"], "foreground_largest_component": false, "largest_component_classes": ["liver"]}', "not foreground classes"),
])
def test_an_unreadable_decision_file_is_a_one_line_error_naming_it(tmp_path, content, problem):
    from medseg.errors import MedsegError

    path = tmp_path / "postprocessing.json"
    path.write_text(content)
    with pytest.raises(MedsegError, match=rf"^{path}: .*{problem}"):
        Postprocessing.read(path)


def test_applying_leaves_the_input_map_untouched():
    truth = _truth()
    predicted = _with_blob(truth, 1)
    kept = Postprocessing(CLASSES, largest_component_classes=("organ",)).apply(predicted)
    assert np.array_equal(kept, truth) and np.array_equal(predicted, _with_blob(truth, 1))
