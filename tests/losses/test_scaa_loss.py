import pytest
import torch
from monai.losses import DiceLoss

from monai_ext.losses import SCAALoss


def _pair(seed=0):
    gen = torch.Generator().manual_seed(seed)
    slices = torch.randn(2, 3, 8, 8, 4, generator=gen)
    aux = torch.randn(2, 3, 4, 4, 8, generator=gen)
    label = torch.randint(0, 3, (2, 1, 8, 8, 16), generator=gen)
    return [slices, aux], (label[..., :4], label)


def test_is_slice_dice_plus_weighted_aux_dice_on_the_downsampled_label():
    [slices, aux], (label_slices, label) = _pair()
    dice = DiceLoss(to_onehot_y=True, softmax=True)
    aux_label = label[:, :, ::2, ::2, ::2].float()  # nearest downsampling x2 keeps the even voxels
    expected = dice(slices, label_slices) + 0.3 * dice(aux, aux_label)
    torch.testing.assert_close(SCAALoss(aux_weight=0.3)([slices, aux], (label_slices, label)), expected)


def test_perfect_prediction_gives_near_zero_loss_and_gradients_flow():
    _, (label_slices, label) = _pair()
    slices = (20 * torch.nn.functional.one_hot(label_slices[:, 0], 3).movedim(-1, 1).float()).requires_grad_(True)
    aux_label = label[:, 0, ::2, ::2, ::2]
    aux = 20 * torch.nn.functional.one_hot(aux_label, 3).movedim(-1, 1).float()
    loss = SCAALoss()([slices, aux], (label_slices, label))
    assert loss < 1e-3
    wrong = SCAALoss()([slices.roll(1, 1), aux], (label_slices, label))
    assert wrong > 0.5
    wrong.backward()
    assert slices.grad.abs().sum() > 0


def test_bad_inputs():
    [slices, aux], (label_slices, label) = _pair()
    loss = SCAALoss()
    with pytest.raises(ValueError, match=r"input as two 5D tensors: input \[slice_logits, aux_logits\]"):
        loss(slices, (label_slices, label))
    with pytest.raises(ValueError, match="target as two 5D tensors"):
        loss([slices, aux], label)
    with pytest.raises(ValueError, match="does not match slice_logits"):
        loss([slices, aux], (label[..., :3], label))
    with pytest.raises(ValueError, match="aux_weight"):
        SCAALoss(aux_weight=-1)
