"""Deep supervision as nnU-Net trains it: in training a DynUNet gives every head at its own resolution and the loss weighs
them with nnU-Net's weights; validation, inference and the planner's forward-only windows get the top output only."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss

from medseg.model.loss import deep_supervision_weights, segmentation_loss
from medseg.model.networks import build_network
from medseg.planning import rules

PATCH = (16, 16, 8)


@pytest.fixture
def supervised():
    """A tiny nnU-Net-class DynUNet with deep supervision (3 stages at 1 x 1 x 2 mm: the top output and one head)."""
    torch.manual_seed(0)
    _, kwargs, _ = rules.dynunet_for_patch(PATCH, (1.0, 1.0, 2.0), residual=False)
    kwargs["filters"] = [4, 8, 16]
    return build_network("DynUNet", 1, 3, **kwargs), kwargs


def test_training_gives_every_head_at_its_own_resolution_and_eval_the_top_output_only(supervised):
    net, kwargs = supervised
    image = torch.randn(2, 1, *PATCH)
    outputs = net.train()(image)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 16, 8), (2, 3, 8, 8, 8)]
    assert kwargs["deep_supr_num"] == len(outputs) - 1
    with torch.no_grad():
        assert net.eval()(image).shape == (2, 3, *PATCH)


def test_the_loss_weighs_the_heads_with_nnunets_weights_top_first():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    loss = segmentation_loss({"deep_supervision": True, "deep_supr_num": 2})
    assert isinstance(loss, DeepSupervisionLoss) and loss.get_weights(3) == deep_supervision_weights(3)
    assert not isinstance(segmentation_loss({"deep_supervision": False}), DeepSupervisionLoss)


def test_the_loss_uses_the_lower_heads_against_labels_brought_to_their_size(supervised):
    net, kwargs = supervised
    loss_fn = segmentation_loss(kwargs)
    label = torch.randint(0, 3, (2, 1, *PATCH)).float()
    top, head = (o.detach() for o in net.train()(torch.randn(2, 1, *PATCH)))
    assert loss_fn([top, head], label) != loss_fn([top, torch.randn_like(head)], label)
    # the label is downsampled by nearest-exact: class values only, never a blend of two classes
    small = torch.nn.functional.interpolate(label, size=head.shape[2:], mode=loss_fn.interp_mode)
    assert set(small.unique().tolist()) <= {0.0, 1.0, 2.0}


def test_a_training_step_updates_the_lower_heads(supervised):
    net, kwargs = supervised
    loss = segmentation_loss(kwargs)(net.train()(torch.randn(2, 1, *PATCH)), torch.randint(0, 3, (2, 1, *PATCH)).float())
    loss.backward()
    assert all(head.conv.conv.weight.grad.abs().sum() > 0 for head in net.deep_supervision_heads)


def test_the_residual_encoder_stacks_nnunets_blocks_per_stage_and_one_block_a_stage_keeps_dynunets_weights():
    from monai.networks.blocks.dynunet_block import UnetResBlock
    from monai.networks.nets import DynUNet

    _, kwargs, _ = rules.dynunet_for_patch((32, 32, 16), (1.0, 1.0, 1.0), residual=True)
    kwargs["filters"] = [2, 4, 8, 8]
    net = build_network("DynUNet", 1, 3, **kwargs)
    stages = [net.input_block, *net.downsamples, net.bottleneck]
    assert kwargs["blocks_per_stage"] == [1, 3, 4, 6]
    assert [len(stage) if isinstance(stage, torch.nn.Sequential) else 1 for stage in stages] == [1, 3, 4, 6]
    assert all(isinstance(block, UnetResBlock) for stage in stages[1:] for block in stage)
    # the stride once per stage, on its first block: the heads keep their resolutions
    assert [tuple(o.shape[2:]) for o in net.train()(torch.randn(1, 1, 32, 32, 16))] == [(32, 32, 16), (16, 16, 8), (8, 8, 4)]
    # without blocks_per_stage, the network is MONAI's DynUNet, and checkpoints of either load into the other
    del kwargs["blocks_per_stage"]
    assert list(build_network("DynUNet", 1, 3, **kwargs).state_dict()) == list(DynUNet(3, 1, 3, **kwargs).state_dict())
    with pytest.raises(Exception, match="blocks_per_stage has 2 counts for 4 stages"):
        build_network("DynUNet", 1, 3, **kwargs, blocks_per_stage=[1, 3])
