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
