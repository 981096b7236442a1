"""Motion diagnostics: can the U-Net put the content of each frame where the motion says?

A video U-Net that folds frames into the batch gives every frame the same time/text embedding, and its temporal
attention sees only distances between frames. At high noise, where the noisy input says nothing yet, such a model
cannot draw the first frame differently from the last: it predicts the same blurred average for every frame, and
the direction of motion is left to the noise. `frame_embedding` + `position_channels` (the defaults) give it the
frame index and the pixel position, and these tests check that they are enough to learn a motion.
"""

import pytest
import torch

from synthesis_core.diffusion import pred_to_x0
from synthesis_core.shapes import BACKGROUND, ShapesVideoDataset
from video_diffusion_pytorch import GaussianDiffusion, Unet3D

SIZE, FRAMES = 12, 6


def moving_right_videos(count: int) -> torch.Tensor:
    dataset = ShapesVideoDataset(count * 8, image_size=SIZE, num_frames=FRAMES, seed=3)
    videos = [video for video, caption in (dataset[i] for i in range(count * 8)) if caption.endswith("right")]
    return torch.stack(videos[:count])


def centroid_columns(videos: torch.Tensor) -> torch.Tensor:
    """Column of the foreground's centre of mass in every frame of the mean video `(b, 3, t, h, w)` -> `(t,)`."""
    foreground = (videos.mean(dim=(0, 1)) - BACKGROUND[0]).clamp(min=0)  # (t, h, w)
    columns = torch.arange(videos.shape[-1], dtype=torch.float32)
    return (foreground.sum(dim=1) * columns).sum(dim=-1) / foreground.sum(dim=(1, 2))


def high_noise_prediction(**unet_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on right-moving videos at high noise; return the model's clean-video prediction from pure noise and
    the data it was trained on."""
    torch.manual_seed(0)
    unet = Unet3D(
        dim=16,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=16,
        init_kernel_size=3,
        use_sparse_linear_attn=False,
        **unet_kwargs,
    )
    diffusion = GaussianDiffusion(
        unet, image_size=SIZE, num_frames=FRAMES, timesteps=1000, loss_type="l2", objective="v"
    )
    data = moving_right_videos(96)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    for _ in range(250):
        batch = data[torch.randint(len(data), (8,))]
        # only the noise levels where the noisy input carries (almost) no information: there the prediction is
        # the mean video, which a model that knows the frame index and the pixel position can learn fast
        loss = diffusion(batch, times=torch.randint(800, 1000, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    noise = torch.randn(16, 3, FRAMES, SIZE, SIZE)
    times = torch.full((16,), 999)
    alpha, sigma = diffusion.schedule.alpha_sigma(times)
    with torch.no_grad():
        x0 = pred_to_x0(
            diffusion.model(noise, times), noise, alpha.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1, 1), "v"
        )
    return (x0 + 1) / 2, data


@pytest.mark.slow
def test_unconditional_model_trained_on_one_direction_predicts_that_motion():
    prediction, data = high_noise_prediction()
    wanted = centroid_columns(data)
    got = centroid_columns(prediction)
    travel = float(wanted[-1] - wanted[0])
    assert travel > 3  # the data moves right by several pixels
    # the prediction from pure noise moves the same way, most of the distance, frame after frame
    assert float(got[-1] - got[0]) > 0.6 * travel, (got, wanted)
    assert bool((got[1:] - got[:-1] > 0).all()), got


@pytest.mark.slow
def test_without_frame_and_position_information_every_frame_gets_the_same_prediction():
    # the diagnosis, kept as a test: the U-Net of video-diffusion-pytorch 0.1 (relative temporal attention only)
    # predicts the same average for every frame, however long the motion it was trained on
    prediction, data = high_noise_prediction(frame_embedding=False, position_channels=False)
    got = centroid_columns(prediction)
    wanted = centroid_columns(data)
    assert float((got[-1] - got[0]).abs()) < 0.2 * float(wanted[-1] - wanted[0]), got
