"""synthesis_core.checks (clear errors on bad input) and synthesis_core.utils (small helpers)."""

import pytest
import torch
from torch import nn

from synthesis_core.checks import (
    check_batch_match,
    check_choice,
    check_divisible,
    check_in_range,
    check_positive_int,
    check_tensor,
)
from synthesis_core.utils import (
    cast_tuple,
    default,
    eval_decorator,
    exists,
    l2norm,
    once,
    prob_mask_like,
)

# checks


def test_check_tensor_message_names_argument_expected_and_received_shape():
    videos = torch.zeros(2, 3, 5, 32, 32)
    with pytest.raises(ValueError) as info:
        check_tensor(
            "videos",
            videos,
            shape=("batch", 3, 8, 32, 32),
            names=("batch", "channels", "frames", "height", "width"),
        )
    assert str(info.value) == (
        "videos: expected shape (batch, 3, 8, 32, 32) (batch, channels, frames, height, width), got (2, 3, 5, 32, 32)"
    )


def test_check_tensor_accepts_wildcards_and_returns_input():
    x = torch.zeros(4, 7, 16)
    assert check_tensor("x", x, ndim=3, shape=("batch", None, 16), dtype_floating=True) is x
    assert check_tensor("x", x, ndim=(2, 3)) is x


def test_check_tensor_rank_and_type_errors():
    with pytest.raises(TypeError, match="images: expected a torch.Tensor, got list"):
        check_tensor("images", [1, 2, 3])
    with pytest.raises(
        ValueError, match=r"images: expected a 4-dimensional tensor.*got 3 dimensions with shape \(3, 8, 8\)"
    ):
        check_tensor("images", torch.zeros(3, 8, 8), ndim=4)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 16\), got \(2, 3, 16\)"):
        check_tensor("x", torch.zeros(2, 3, 16), shape=("batch", 16))
    with pytest.raises(TypeError, match="ids: expected a floating point tensor, got dtype torch.int64"):
        check_tensor("ids", torch.zeros(2, dtype=torch.long), dtype_floating=True)


def test_check_tensor_value_range():
    check_tensor("images", torch.rand(2, 3), value_range=(0, 1))
    with pytest.raises(ValueError, match=r"images: expected values in \[0, 1\], got values in \[-0.5, 1\]"):
        check_tensor("images", torch.tensor([-0.5, 1.0]), value_range=(0, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_tensor("images", torch.tensor([0.5, float("nan")]), value_range=(0, 1))
    check_tensor("x", torch.tensor([5.0]), value_range=(0, None))


def test_check_batch_match():
    assert check_batch_match(videos=torch.zeros(3, 1), texts=["a", "b", "c"], cond=None) == 3
    with pytest.raises(ValueError, match="batch sizes must match, got videos=3, texts=2"):
        check_batch_match(videos=torch.zeros(3, 1), texts=["a", "b"])


def test_scalar_checks():
    assert check_in_range("prob", 0.5, 0, 1) == 0.5
    with pytest.raises(ValueError, match=r"prob: expected a value in \[0, 1\], got 1.5"):
        check_in_range("prob", 1.5, 0, 1)
    with pytest.raises(TypeError, match="prob"):
        check_in_range("prob", "high", 0, 1)
    assert check_choice("objective", "v", ("eps", "x0", "v")) == "v"
    with pytest.raises(ValueError, match="objective: expected one of 'eps', 'x0', 'v', got 'w'"):
        check_choice("objective", "w", ("eps", "x0", "v"))
    with pytest.raises(ValueError, match="depth: expected an int > 0, got 0"):
        check_positive_int("depth", 0)
    with pytest.raises(TypeError, match="depth"):
        check_positive_int("depth", 2.0)
    with pytest.raises(ValueError, match=r"dim: expected a multiple of heads \(4\), got 10"):
        check_divisible("dim", 10, 4, divisor_name="heads")


# utils


def test_exists_default_cast_tuple():
    assert exists(0) and not exists(None)
    assert default(None, 3) == 3 and default(2, 3) == 2
    assert default(None, lambda: [1]) == [1]
    assert cast_tuple(2, 3) == (2, 2, 2) and cast_tuple((1, 2)) == (1, 2) and cast_tuple([1, 2]) == (1, 2)


def test_prob_mask_like_extremes_and_rate():
    assert prob_mask_like((4, 3), 1.0).all() and prob_mask_like(5, 0.0).logical_not().all()
    mask = prob_mask_like((10000,), 0.3)
    assert mask.dtype == torch.bool and abs(mask.float().mean().item() - 0.3) < 0.03


def test_l2norm():
    t = torch.randn(3, 5)
    assert torch.allclose(l2norm(t).norm(dim=-1), torch.ones(3))


def test_once_eval_decorator():
    calls = []
    record = once(lambda x: calls.append(x))
    record(1)
    record(2)
    assert calls == [1]

    class Model(nn.Module):
        @eval_decorator
        def sample(self):
            return self.training

    model = Model().train()
    assert model.sample() is False and model.training is True


# image sizes and pixel batches (the diffusion models' inputs)


def test_check_image_size():
    from synthesis_core.checks import check_image_size

    assert check_image_size("image_size", 8) == (8, 8)
    assert check_image_size("image_size", [8, 12]) == (8, 12)
    with pytest.raises(ValueError, match="image_size: expected an int > 0"):
        check_image_size("image_size", (8, 0))
    with pytest.raises(TypeError, match=r"image_size: expected an int or a \(height, width\) pair"):
        check_image_size("image_size", (8, 8, 8))
    with pytest.raises(TypeError, match="image_size"):
        check_image_size("image_size", True)


def test_check_pixel_batch_shapes():
    from synthesis_core.checks import check_pixel_batch

    videos = torch.rand(2, 3, 4, 8, 6)
    assert check_pixel_batch("videos", videos, channels=3, image_size=(8, 6)) is videos
    check_pixel_batch("videos", torch.rand(2, 3, 8, 6), channels=3, image_size=(8, 6))
    check_pixel_batch("videos", videos, channels=3, image_size=(8, 6), frames=4, allow_images=False)
    with pytest.raises(ValueError, match=r"videos: expected shape \(batch, 3, 5, 8, 6\)"):
        check_pixel_batch("videos", videos, channels=3, image_size=(8, 6), frames=5)
    with pytest.raises(ValueError, match=r"videos: expected shape \(batch, 3, frames, 8, 8\)"):
        check_pixel_batch("videos", videos, channels=3, image_size=(8, 8))
    with pytest.raises(ValueError, match=r"videos: expected a 5-dimensional tensor"):
        check_pixel_batch("videos", torch.rand(2, 3, 8, 6), channels=3, image_size=(8, 6), allow_images=False)
    with pytest.raises(TypeError, match="videos: expected a floating point tensor"):
        check_pixel_batch("videos", torch.zeros(2, 3, 8, 6, dtype=torch.long), channels=3, image_size=(8, 6))


def test_pixels_to_symmetric_ranges():
    from synthesis_core.checks import pixels_to_symmetric

    x = torch.tensor([0.0, 0.25, 1.0])
    out, symmetric = pixels_to_symmetric("x", x)
    assert torch.equal(out, torch.tensor([-1.0, -0.5, 1.0])) and not symmetric
    with pytest.raises(ValueError, match=r"x: expected values in \[0.0, 1.0\]"):
        pixels_to_symmetric("x", torch.tensor([-0.5, 0.5]))
    # 'auto' reads a batch with negative values as already in [-1, 1]
    out, symmetric = pixels_to_symmetric("x", torch.tensor([-0.5, 0.5]), input_range="auto")
    assert torch.equal(out, torch.tensor([-0.5, 0.5])) and symmetric
    # a small overshoot is tolerated and clamped, a large one is not
    out, _ = pixels_to_symmetric("x", torch.tensor([1.0005, 0.5]), input_range="unit", tolerance=1e-3)
    assert torch.equal(out, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"x: expected pixel values in \[0, 1\] \(or \[-1, 1\]\)"):
        pixels_to_symmetric("x", torch.tensor([0.0, 3.0]), input_range="auto", tolerance=1e-3)
    with pytest.raises(ValueError, match=r"x: expected pixel values in \[-1, 1\]"):
        pixels_to_symmetric("x", torch.tensor([-2.0, 0.0]), input_range="symmetric", tolerance=1e-3)
    with pytest.raises(ValueError, match="x: expected finite pixel values"):
        pixels_to_symmetric("x", torch.tensor([float("nan"), 0.0]), input_range="auto")
    with pytest.raises(ValueError, match="input_range"):
        pixels_to_symmetric("x", x, input_range="bytes")


# the pixel rule and the other model-input checks


def test_check_pixels_reads_unit_symmetric_and_byte_batches():
    import warnings

    from synthesis_core.checks import check_pixels

    unit = torch.rand(2, 3, 4, 4)
    assert torch.equal(check_pixels("videos", unit), unit)
    torch.testing.assert_close(check_pixels("videos", unit, output_range="symmetric"), unit * 2 - 1)
    # [-1, 1] (a negative value): mapped to [0, 1], no warning when nothing is clamped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(check_pixels("videos", unit * 2 - 1), unit)
        # overshoot up to the tolerance is clamped silently
        assert check_pixels("videos", torch.tensor([[0.0, 1.0005]])).max() == 1.0
    # uint8 is 0-255, exactly
    assert torch.equal(
        check_pixels("videos", torch.tensor([[0, 51, 255]], dtype=torch.uint8)), torch.tensor([[0.0, 0.2, 1.0]])
    )
    # other float dtypes are cast to the model's
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = check_pixels("videos", unit.to(dtype), dtype=torch.float32)
        assert out.dtype == torch.float32 and torch.equal(out, unit.to(dtype).float())
    assert check_pixels("videos", unit, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_check_pixels_clamps_randn_with_one_warning_per_call_site():
    import warnings

    from synthesis_core.checks import check_pixels

    noise = torch.randn(1, 3, 5, 32, 32) * 2
    with pytest.warns(UserWarning, match=r"videos: pixel values outside \[-1, 1\] were clamped"):
        out = check_pixels("videos", noise)
    torch.testing.assert_close(out, (noise.clamp(-1, 1) + 1) / 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per call site
        for _ in range(3):
            check_pixels("videos", noise)
    assert len(caught) == 1


@pytest.mark.parametrize(
    ("pixels", "error", "message"),
    [
        (
            torch.rand(2, 3, 4, 4) * 255,
            ValueError,
            r"videos: expected pixel values in \[0, 1\] \(or \[-1, 1\]\), got "
            r"values in .*divided by 255 \(or passed as a uint8 tensor\)",
        ),
        ((torch.rand(2, 3, 4, 4) - 0.5) * 255, ValueError, "videos: .*far outside both; 0-255 pixels must be divided"),
        (
            torch.tensor([[0.5, float("nan")]]),
            ValueError,
            "videos: expected finite pixel values, got NaN or inf in 1 of 2",
        ),
        (torch.tensor([[0.5, -float("inf")]]), ValueError, "videos: expected finite pixel values"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            TypeError,
            "videos: expected a floating point tensor .* got dtype torch.int64",
        ),
        (torch.zeros(2, 3, dtype=torch.bool), TypeError, "videos: .*got dtype torch.bool"),
        (
            torch.rand(0, 3, 4, 4),
            ValueError,
            r"videos: expected at least one sample, got an empty batch of shape \(0, 3",
        ),
        (
            torch.rand(2, 3, device="meta"),
            ValueError,
            "videos: expected a tensor on the model's device cpu, got one on meta; move it with videos.to",
        ),
        ([[0.5]], TypeError, "videos: expected a torch.Tensor"),
    ],
)
def test_check_pixels_refuses_bad_batches_naming_the_argument(pixels, error, message):
    from synthesis_core.checks import check_pixels

    with pytest.raises(error, match=message):
        check_pixels("videos", pixels, device="cpu")


def test_check_pixels_explicit_ranges():
    from synthesis_core.checks import check_pixels

    with pytest.raises(ValueError, match=r"x: expected pixel values in \[0, 1\], got values in \[-0.5"):
        check_pixels("x", torch.tensor([[-0.5, 0.5]]), input_range="unit")
    # 'symmetric' reads a batch without negatives as [-1, 1] too (Imagen with auto_normalize_img=False)
    torch.testing.assert_close(
        check_pixels("x", torch.tensor([[0.0, 1.0]]), input_range="symmetric"), torch.tensor([[0.5, 1.0]])
    )
    with pytest.raises(ValueError, match="input_range"):
        check_pixels("x", torch.rand(1, 2), input_range="bytes")


def test_check_embeddings():
    from synthesis_core.checks import check_embeddings

    embeds = torch.randn(2, 4, 8)
    assert check_embeddings("text_embeds", embeds) is embeds
    assert check_embeddings("text_embeds", embeds.double(), dtype=torch.float32).dtype == torch.float32
    bad = embeds.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="text_embeds: expected finite values, got NaN or inf in 1 of 64"):
        check_embeddings("text_embeds", bad)
    with pytest.raises(TypeError, match="text_embeds: expected a floating point tensor .*torch.int64"):
        check_embeddings("text_embeds", embeds.long())
    with pytest.raises(ValueError, match="text_embeds: expected at least one sample"):
        check_embeddings("text_embeds", embeds[:0])
    with pytest.raises(ValueError, match="text_embeds: expected a tensor on the model's device cpu, got one on meta"):
        check_embeddings("text_embeds", embeds.to("meta"), device=torch.device("cpu"))


def test_sampler_setting_checks():
    from synthesis_core.checks import check_guidance_scale, check_steps, check_temperature

    assert check_guidance_scale("cond_scale", 0) == 0 and check_guidance_scale("cond_scale", torch.tensor(3.0)) == 3.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cond_scale: expected a finite guidance scale >= 0"):
            check_guidance_scale("cond_scale", bad)
    with pytest.raises(TypeError, match="cond_scale"):
        check_guidance_scale("cond_scale", "3")
    assert check_steps("steps", 4, maximum=10) == 4
    with pytest.raises(ValueError, match="steps: expected an int > 0, got 0"):
        check_steps("steps", 0)
    with pytest.raises(ValueError, match="steps: expected at most 10 steps, got 11"):
        check_steps("steps", 11, maximum=10)
    with pytest.raises(TypeError, match="steps"):
        check_steps("steps", 2.0)
    assert check_temperature("temperature", 0) == 0  # greedy
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature: expected a finite temperature >= 0"):
            check_temperature("temperature", bad)
    with pytest.raises(ValueError, match="temperature: expected a finite temperature > 0, got 0"):
        check_temperature("temperature", 0.0, allow_zero=False)
