"""The training loss, shared by the Lightning module and the memory planner's trial steps."""

from monai.losses import DiceCELoss


def segmentation_loss() -> DiceCELoss:
    """Return Dice + cross-entropy on softmax logits against (B, 1, ...) class-index labels."""
    return DiceCELoss(to_onehot_y=True, softmax=True)
