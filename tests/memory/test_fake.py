from medseg.memory.estimate import estimate_step
from medseg.memory.fake import fake_step
from medseg.memory.measure import training_setup
from medseg.recipe import Recipe


def test_fake_tensor_peak_agrees_with_the_byte_counting_estimator_within_ten_percent():
    recipe = Recipe("UNet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}, ("CT",), ("b", "o", "l"), (64, 64, 32))
    counted = estimate_step(training_setup(recipe), 2, "32-true").peak_bytes
    faked = fake_step(recipe, 2, "32-true").peak_bytes
    assert abs(faked - counted) / counted < 0.10
