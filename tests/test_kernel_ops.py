import pytest
import torch

from fidediff_pipeline.kernel_ops import apply_per_pixel_kernels, global_kernel_to_map, identity_kernels


def test_identity_kernel_leaves_image_unchanged():
    image = torch.rand(2, 3, 20, 24)
    assert torch.allclose(apply_per_pixel_kernels(image, identity_kernels(2, 5, 20, 24)), image)


def test_offset_delta_is_a_shift_in_the_documented_direction():
    image = torch.rand(1, 3, 16, 16)
    kernel = torch.zeros(3, 3)
    kernel[1, 2] = 1.0  # weight on the pixel at offset (0, +1): out[y, x] = img[y, x + 1]
    out = apply_per_pixel_kernels(image, global_kernel_to_map(kernel, 16, 16))
    assert torch.allclose(out[..., :-1], image[..., 1:])


def test_box_kernel_equals_conv2d_in_the_interior():
    image = torch.rand(1, 1, 12, 12)
    kernel = torch.rand(5, 5)
    kernel /= kernel.sum()
    out = apply_per_pixel_kernels(image, global_kernel_to_map(kernel, 12, 12))
    reference = torch.nn.functional.conv2d(image, kernel[None, None])  # correlation, valid region
    assert torch.allclose(out[..., 2:-2, 2:-2], reference, atol=1e-6)


def test_gradients_flow_to_kernels_and_image():
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    kernels = torch.softmax(torch.randn(1, 9, 8, 8), dim=1).requires_grad_()
    apply_per_pixel_kernels(image, kernels).sum().backward()
    assert image.grad is not None and kernels.grad is not None and kernels.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [8, 16, 10])
def test_bad_kernel_channels_are_rejected(channels):
    with pytest.raises(ValueError, match="m\\*m channels"):
        apply_per_pixel_kernels(torch.rand(1, 3, 8, 8), torch.rand(1, channels, 8, 8))


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="do not match"):
        apply_per_pixel_kernels(torch.rand(1, 3, 8, 8), torch.rand(1, 9, 8, 7))


@pytest.mark.parametrize("length", [9, 15, 21])
@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135, 170])
def test_principal_axis_of_a_straight_blur_gives_its_direction_and_length(length, angle):
    from fidediff_pipeline.kernel_ops import kernel_principal_axis, linear_motion_kernel

    est_angle, est_length = kernel_principal_axis(linear_motion_kernel(length, angle, size=31))
    assert min(abs(est_angle - angle), 180 - abs(est_angle - angle)) < 1.0
    assert abs(est_length - length) < 1.0


def test_principal_axis_rejects_a_map():
    from fidediff_pipeline.kernel_ops import kernel_principal_axis

    with pytest.raises(ValueError, match="one square kernel"):
        kernel_principal_axis(torch.zeros(2, 9, 9).numpy())


def test_frequency_loss_is_zero_for_equal_images_and_weighs_lost_detail():
    from fidediff_pipeline.losses import frequency_l1_loss

    sharp = torch.rand(2, 3, 32, 32)
    smooth = torch.nn.functional.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    assert frequency_l1_loss(sharp, sharp).item() == 0.0
    assert frequency_l1_loss(smooth, sharp).item() > 0.05


def test_time_loss_l1_is_minimised_by_the_median_level_and_l2_by_the_mean():
    """One blur that fits three levels: a constant prediction fitted by each norm lands where it should."""
    from fidediff_pipeline.losses import time_regression_loss

    targets = torch.tensor([120.0, 280.0, 280.0])  # mean 226.7, median 280
    for norm, expected in (("l2", 226.7), ("l1", 280.0)):
        t = torch.tensor([200.0], requires_grad=True)
        optimiser = torch.optim.Adam([t], lr=2.0)
        for _ in range(400):
            optimiser.zero_grad()
            time_regression_loss(t.expand(3), targets, norm=norm).backward()
            optimiser.step()
        assert abs(t.item() - expected) < 3, (norm, t.item())
    assert time_regression_loss(targets, targets, norm="l1").item() == 0.0
    with pytest.raises(ValueError, match="norm must be one of"):
        time_regression_loss(targets, targets, norm="huber")


def test_kernel_supervision_loss_crops_the_true_kernel_and_is_zero_when_exact():
    from fidediff_pipeline.kernel_ops import global_kernel_to_map, linear_motion_kernel
    from fidediff_pipeline.losses import kernel_supervision_loss

    true = torch.from_numpy(linear_motion_kernel(7, 45, size=31))[None]
    small = torch.from_numpy(linear_motion_kernel(7, 45, size=11))
    predicted = global_kernel_to_map(small / small.sum(), 8, 8)
    assert kernel_supervision_loss(predicted, true).item() < 1e-5
    identity = global_kernel_to_map(torch.eye(11)[5:6].T @ torch.eye(11)[5:6], 8, 8)  # a delta at the centre
    assert kernel_supervision_loss(identity, true).item() > 1.5  # disjoint supports: distance near 2
    with pytest.raises(ValueError, match="smaller than the predicted"):
        kernel_supervision_loss(predicted, true[:, :9, :9])


def test_kernel_moment_loss_sees_direction_where_tapwise_l1_is_flat():
    """Two thin lines that miss each other are equally far apart tap-wise whatever their angle; their moments
    are not, so the moment loss ranks a near miss above a perpendicular one (what the tap-wise L1 cannot)."""
    from fidediff_pipeline.kernel_ops import global_kernel_to_map, linear_motion_kernel
    from fidediff_pipeline.losses import kernel_moment_loss, kernel_supervision_loss

    true = torch.from_numpy(linear_motion_kernel(15, 0, size=31))[None]

    def predicted(angle):
        k = torch.from_numpy(linear_motion_kernel(15, angle, size=19))
        return global_kernel_to_map(k / k.sum(), 4, 4)

    exact, near, perpendicular = (kernel_moment_loss(predicted(a), true).item() for a in (0, 20, 90))
    assert exact < 1e-4
    assert 0.05 < near < perpendicular
    tap_near, tap_perpendicular = (kernel_supervision_loss(predicted(a), true).item() for a in (20, 90))
    # Tap-wise both are nearly disjoint from the truth (1.58 vs 1.86 of 2); the moments tell them apart 3.7x.
    assert tap_perpendicular / tap_near < 1.25 and perpendicular / near > 3
    with pytest.raises(ValueError, match="smaller than the predicted"):
        kernel_moment_loss(predicted(0), true[:, :9, :9])


def test_expand_kernel_map_gives_every_pixel_its_blocks_kernel():
    from fidediff_pipeline.kernel_ops import expand_kernel_map

    coarse = torch.rand(2, 9, 3, 4)
    full = expand_kernel_map(coarse, 10, 13)  # blocks of 4: ceil(10 / 4) = 3, ceil(13 / 4) = 4
    assert full.shape == (2, 9, 10, 13)
    assert torch.equal(full[:, :, 9, 12], coarse[:, :, 2, 3])
    assert torch.equal(full[:, :, 4:8, 0:4], coarse[:, :, 1:2, 0:1].expand(2, 9, 4, 4))
    assert expand_kernel_map(full, 10, 13) is full  # already per pixel
    with pytest.raises(ValueError, match="not a block grid"):
        expand_kernel_map(coarse, 10, 40)


@pytest.mark.parametrize("height, width, stride", [(12, 16, 4), (10, 13, 4), (9, 9, 2)])
def test_block_kernels_at_centres_equal_the_per_pixel_map_there(height, width, stride):
    from fidediff_pipeline.kernel_ops import apply_block_kernels_at_centres, block_centre_indices, expand_kernel_map

    torch.manual_seed(0)
    image = torch.rand(2, 3, height, width, dtype=torch.float64)
    h, w = -(-height // stride), -(-width // stride)
    kernels = torch.softmax(torch.randn(2, 25, h, w, dtype=torch.float64), dim=1)
    full = apply_per_pixel_kernels(image, expand_kernel_map(kernels, height, width))
    rows, cols = block_centre_indices(height, h), block_centre_indices(width, w)
    assert rows.max() < height and cols.max() < width  # a partial last block's centre stays inside
    assert torch.allclose(apply_block_kernels_at_centres(image, kernels), full[..., rows, :][..., cols])
    with pytest.raises(ValueError, match="not a block grid"):
        apply_block_kernels_at_centres(image, kernels[..., : h - 1, :])


def test_reblur_loss_of_a_coarse_map_is_zero_for_the_true_kernel_and_grows_with_a_wrong_one():
    from fidediff_pipeline.data.camera_response import reblur_in_linear_light
    from fidediff_pipeline.kernel_ops import linear_motion_kernel
    from fidediff_pipeline.losses import reblur_loss

    torch.manual_seed(0)
    sharp = torch.rand(1, 3, 32, 32)
    true = torch.from_numpy(linear_motion_kernel(7, 0.0, size=9)).float()
    blurry = reblur_in_linear_light(sharp, global_kernel_to_map(true, 32, 32), crf="gamma2.2")
    coarse = global_kernel_to_map(true, 8, 8)  # one kernel per 4 x 4 block
    wrong = global_kernel_to_map(true.T.contiguous(), 8, 8)  # the perpendicular blur
    assert float(reblur_loss(sharp, blurry, coarse)) < 1e-5
    assert float(reblur_loss(sharp, blurry, wrong)) > 0.02
    assert float(reblur_loss(sharp, blurry, wrong, "srgb")) > 0.02
