"""A1111's `/sdapi/v1/img2img` request: the shared fields plus init images, mask and inpainting options."""

from typing import ClassVar

from engine.wire.txt2img import GenerationRequest


class Img2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingImg2Img` as A1111's API exposes it, with its API defaults."""

    endpoint: ClassVar[str] = "img2img"

    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False
    # img2img's own default; the shared base declares None (A1111's quirk matters only for txt2img).
    denoising_strength: float | None = 0.75
