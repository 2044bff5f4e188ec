"""A1111's `/sdapi/v1/img2img` request: the shared fields plus init images, mask and inpainting options."""

from typing import ClassVar

from engine.wire.txt2img import GenerationRequest
from engine.wire.validation import LenientInt, LenientStr, LenientStrList


class Img2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingImg2Img` as A1111's API exposes it, with its API defaults."""

    endpoint: ClassVar[str] = "img2img"

    init_images: LenientStrList | None = None
    resize_mode: LenientInt | None = 0
    image_cfg_scale: float | None = None
    mask: LenientStr | None = None
    mask_blur_x: LenientInt | None = 4
    mask_blur_y: LenientInt | None = 4
    mask_blur: LenientInt | None = None
    mask_round: bool | None = True
    inpainting_fill: LenientInt | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: LenientInt | None = 0
    inpainting_mask_invert: LenientInt | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: LenientStr | None = None
    include_init_images: bool | None = False
    # img2img's own default; the shared base declares None (A1111's quirk matters only for txt2img).
    denoising_strength: float | None = 0.75
