"""synthesis-core: the building blocks shared by the text-to-image and text-to-video packages.

Every public name of the submodules is also importable from here (`from synthesis_core import Attention`).
The submodules load on first use, so `import synthesis_core` stays cheap (no torch or transformers
import until a name is asked for).

Reading order: utils, checks -> layers -> attention -> chunked -> quantize, gan -> diffusion -> text ->
checkpoint -> training -> video, data -> datasets.
"""
from __future__ import annotations

import importlib
from typing import Any

from synthesis_core.__about__ import __version__

# BEGIN EXPORTS
_EXPORTS = {
    "utils": ("exists", "default", "identity", "cast_tuple", "divisible_by", "prob_mask_like", "l2norm", "once", "eval_decorator", "maybe", "pad_at_dim", "frozen",),
    "checks": ("check_tensor", "check_batch_match", "check_in_range", "check_choice", "check_positive_int", "check_divisible", "check_image_size", "check_pixel_batch", "pixels_to_symmetric", "PIXEL_INPUT_RANGES", "PIXEL_DTYPES", "PIXEL_TOLERANCE", "check_device", "check_not_empty", "check_pixels", "check_embeddings", "check_guidance_scale", "check_steps", "check_temperature",),
    "layers": ("RMSNorm", "LayerNorm", "ChannelLayerNorm", "ChannelRMSNorm", "GEGLU", "FeedForward", "ChannelFeedForward", "SinusoidalPosEmb", "LearnedSinusoidalPosEmb", "TimestepEmbedding", "FrameEmbedding", "position_grid", "token_shift", "shift_tokens", "PEG", "Upsample", "PixelShuffleUpsample", "Downsample", "ResnetBlock", "Residual",),
    "attention": ("mask_value", "build_attn_mask", "attend", "RotaryEmbedding", "apply_rotary_emb", "rotate_half", "T5RelativePositionBias", "ContinuousPositionBias", "Attention", "SpaceTimeAttention", "LinearAttention", "PerceiverResampler", "TransformerBlock", "Transformer",),
    "chunked": ("chunked_feedforward", "apply_in_slices", "chunked_attention", "ReversibleSequence", "SequentialResidual", "checkpointed",),
    "quantize": ("QuantizeOutput", "VectorQuantize", "LFQ", "FSQ", "make_quantizer", "fsq_levels", "kmeans", "orthogonal_loss",),
    "gan": ("hinge_discr_loss", "hinge_gen_loss", "bce_discr_loss", "bce_gen_loss", "gradient_penalty", "adaptive_generator_weight", "Blur", "DiscriminatorBlock", "Discriminator", "PerceptualLoss", "default_perceptual_layers", "default_vgg", "vgg16_cache_path",),
    "diffusion": ("right_pad_dims_to", "linear_beta_schedule", "cosine_beta_schedule", "sigmoid_beta_schedule", "BETA_SCHEDULES", "DiscreteSchedule", "log_snr_linear", "log_snr_cosine", "LOG_SNR_SCHEDULES", "alpha_sigma_from_log_snr", "ContinuousSchedule", "make_schedule", "karras_sigmas", "sampling_times", "OBJECTIVE_ALIASES", "normalize_objective", "eps_to_x0", "x0_to_eps", "v_to_x0", "v_to_eps", "x0_eps_to_v", "pred_to_x0", "pred_to_eps", "x0_to_target", "min_snr_weight", "p2_weight", "cfg_combine", "static_threshold", "dynamic_threshold", "VP_SAMPLERS", "posterior_mean_std", "ddpm_step", "ddim_step", "dpmpp_2m_step", "renoise_step", "randn_like", "prepare_inpaint", "sample_vp", "EDMPreconditioning", "edm_euler_step", "edm_heun_step", "sample_edm",),
    "text": ("DEFAULT_T5_NAME", "DEFAULT_BERT_NAME", "KNOWN_ENCODER_DIMS", "TextEncoderUnavailableError", "HUB_PROBE_TIMEOUT_S", "probe_hub", "forget_text_encoder_failures", "get_encoded_dim", "TextEncoder", "SimpleTextEncoder", "build_vocab", "split_words", "precompute_text_embeddings", "PrecomputedTextEmbeddings",),
    "checkpoint": ("CONFIG_NAME", "WEIGHTS_NAME", "CheckpointError", "atomic_path", "remove_stale_temporary_files", "atomic_write_bytes", "atomic_write_json", "read_json", "prepare_tensors_for_saving", "save_checkpoint", "load_checkpoint", "load_torch_weights_only", "flatten_state_dict", "unflatten_state_dict", "CheckpointManager", "package_info", "class_path", "ENTRY_POINT_GROUP", "register_loadable", "loadable_classes", "resolve_loadable", "constructor_parameters", "check_config", "instantiate_from_config", "PretrainedMixin", "load_model_from_folder", "check_state_dict", "load_state_dict_checked",),
    "training": ("BaseTrainer", "AutoencoderGANTrainer", "DataStream", "make_dataloader", "split_batch", "cycle", "warmup_cosine_lambda", "extract_model_state", "mix_seed", "process_seed", "process_rng_path",),
    "video": ("save_video", "read_video", "save_image", "read_image", "make_grid", "contact_sheet", "video_to_pil_frames", "tensor_to_pil", "pil_to_tensor", "to_uint8", "psnr",),
    "data": ("ImageFolderDataset", "VideoFolderDataset", "fit_num_frames", "resize_and_center_crop", "read_caption", "DECODE_ERRORS",),
    "datasets": ("COLORS", "SHAPES", "DIRECTIONS", "make_caption", "caption_attributes", "all_captions", "shape_mask", "ShapesVideoDataset", "CaptionScorer",),
    "cli": ("add_dataset_arguments", "add_training_arguments", "add_output_arguments", "training_kwargs", "resolve_device", "write_video", "run_cli",),
}
# END EXPORTS

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'synthesis_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"synthesis_core.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
