"""The tiny demo models' architectures: the real models' block structure with their widths shrunk.

Each family keeps what the single-file key layout encodes (levels, resnets per level, where cross-attention
sits, which text encoders) so the files written from these configs load like the real ones.
"""

from diffusers import EulerDiscreteScheduler, PNDMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from engine.demo.tokenizer import END_OF_TEXT, MODEL_MAX_LENGTH, OPEN_CLIP_PAD


# Real block structure (levels, resnets per level, where cross-attention sits), widths shrunk.
UNET_CONFIGS = {
    "sd15": {
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
    "sdxl": {
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 2),
        "attention_head_dim": (2, 4, 4),
        "use_linear_projection": True,
        # The UNet attends to both encoders' hidden states side by side: 32 + 48.
        "cross_attention_dim": 80,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        # 6 size/crop numbers x addition_time_embed_dim, plus text_encoder_2's pooled projection (48).
        "projection_class_embeddings_input_dim": 6 * 8 + 48,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
    # stable-diffusion-xl-refiner-1.0's shape: 4 levels with cross-attention in the middle two, attending to
    # OpenCLIP-G alone (48 wide here); its added conditions are 5 numbers (size, crop, aesthetic score).
    "sdxl_refiner": {
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "transformer_layers_per_block": 2,
        "attention_head_dim": (2, 4, 4, 4),
        "use_linear_projection": True,
        "cross_attention_dim": 48,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 5 * 8 + 48,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
}
VAE_CONFIG = {
    "block_out_channels": (8, 16, 32, 32),  # 4 levels: the latent is 1/8 of the image, as A1111 assumes
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}
VAE_OVERRIDES = {
    "sd15": {"scaling_factor": 0.18215},
    "sdxl": {"scaling_factor": 0.13025, "force_upcast": True},
    "sdxl_refiner": {"scaling_factor": 0.13025, "force_upcast": True},
}


def clip_config(width: int, hidden_act: str, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A CLIP text config at a tiny width whose vocabulary and special ids are the tokenizer's."""
    # 12 layers: A1111's "CLIP skip" reaches back up to 12 layers of CLIP-L, and diffusers recognises an
    # SDXL file by a key of OpenCLIP's 10th layer (`resblocks.9`).
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        projection_dim=width,
        num_hidden_layers=12,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# (component, tokenizer component, model class, width, activation, pad token). SDXL's encoders must differ
# in width: diffusers' single-file loader tells them apart by the width of their position embeddings.
TEXT_ENCODERS = {
    "sd15": (("text_encoder", "tokenizer", CLIPTextModel, 32, "quick_gelu", END_OF_TEXT),),
    "sdxl": (
        ("text_encoder", "tokenizer", CLIPTextModel, 32, "quick_gelu", END_OF_TEXT),
        ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, 48, "gelu", OPEN_CLIP_PAD),
    ),
    "sdxl_refiner": (
        ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, 48, "gelu", OPEN_CLIP_PAD),
    ),
}
# The real refiner ships the base's VAE and OpenCLIP-G weights unchanged: the tiny one takes tiny-sdxl's, so
# the resident cache shares them as it shares the real ones (and LoRA on the shared encoder is exercised).
SHARED_WITH = {"sdxl_refiner": ("sdxl", ("vae", "text_encoder_2"))}
# As the hub's scheduler configs of runwayml/stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0.
SCALED_LINEAR = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
SCHEDULERS = {
    "sd15": (
        PNDMScheduler,
        {**SCALED_LINEAR, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1},
    ),
    "sdxl": (
        EulerDiscreteScheduler,
        {
            **SCALED_LINEAR,
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "use_karras_sigmas": False,
        },
    ),
}
SCHEDULERS["sdxl_refiner"] = SCHEDULERS["sdxl"]
