"""The generation plan: what to compute, in diffusers' vocabulary, decided once at the edge. No torch."""

from dataclasses import dataclass, field
from typing import Any

from engine.prompts.options import PromptOptions
from engine.prompts.parser import ExtraNetworkTag


@dataclass(frozen=True)
class NoiseSpec:
    """Per-image seeds and how A1111 turns them into noise (`modules/rng.py`)."""

    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)  # (width, height); 0 = off
    source: str = "GPU"  # A1111 `randn_source`: "GPU" draws on the CUDA device, "CPU" on the host
    eta_noise_seed_delta: int = 0


@dataclass(frozen=True)
class SamplerSpec:
    """The resolved sampler (an `engine.samplers.SamplerChoice`) and its knobs (`SamplerOptions`)."""

    choice: Any
    options: Any


@dataclass(frozen=True)
class HiresPlan:
    """Hires fix's second pass (A1111 `StableDiffusionProcessingTxt2Img.sample_hr_pass`)."""

    width: int  # the upscale target (A1111 hr_upscale_to_x/y) before the centre crop
    height: int
    crop: tuple[int, int]  # (x, y) latent columns/rows cut off to reach hr_resize_x × hr_resize_y
    upscaler: str  # an A1111 upscaler name: a latent mode, "Lanczos", an ESRGAN model…
    num_inference_steps: int  # sampler steps actually run (hr_second_pass_steps or steps)
    strength: float  # denoising_strength, already clamped to ≤ 0.999 as A1111 does
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    sampler: SamplerSpec
    checkpoint: str | None = None  # None: the first pass's checkpoint
    # The LoRAs A1111 activates for this pass: hr_prompt's tags (the first pass's when hr_prompt is empty).
    loras: tuple[Any, ...] = ()

    @property
    def schedule_length(self) -> int:
        """A1111 runs the last `num_inference_steps` of an `int(steps / denoise)`-step schedule; at strength 0
        the schedule has no step (`setup_img2img_steps`), so the second pass denoises nothing."""
        return int(self.num_inference_steps / self.strength) if self.strength > 0 else 0

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the final images: the latent is (size // 8) minus the crop, so pixels are
        floored to a multiple of 8 (a 1.6× upscale of 64 px gives 96, not 102)."""
        return (self.width // 8 - self.crop[0]) * 8, (self.height // 8 - self.crop[1]) * 8


@dataclass(frozen=True)
class InitPlan:
    """Where img2img starts: the init images (cycled over the batch) and, for inpainting, the mask."""

    images: tuple[Any, ...]  # PIL images, RGB or RGBA
    strength: float  # denoising_strength, clamped to ≤ 0.999 for A1111's step count
    resize_mode: int  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)
    mask: Any | None = None  # PIL image; white = repaint
    mask_blur: tuple[int, int] = (4, 4)  # (x, y) Gaussian sigmas
    invert_mask: bool = False
    mask_round: bool = True
    fill: str = "original"  # "fill", "original", "latent noise", "latent nothing" (A1111 inpainting_fill 0–3)
    only_masked: bool = True
    padding: int = 0
    noise_multiplier: float = 1.0
    # A1111 `latent_mask`: the mask the latents are blended with instead of the (blurred) inpainting mask,
    # resized straight to the latent size (outpainting scripts send a sharper one).
    latent_mask: Any | None = None


@dataclass(frozen=True)
class FaceRestorationPlan:
    """Restore the faces of each decoded image (A1111 `restore_faces` with `face_restoration_model`)."""

    model: str  # a restorer name: "CodeFormer" or "GFPGAN"
    weight: float  # CodeFormer's fidelity (A1111 `code_former_weight`): 0 strongest, 1 closest to the input
    field: str = "face_restoration_model"  # where the model name came from, for errors


@dataclass(frozen=True)
class DetailerPlan:
    """One ADetailer unit, in diffusers' terms: detect → masks → inpaint each mask (only masked or whole)."""

    model: str  # a detector in the models folder's adetailer/ directory
    model_field: str  # the request field naming it, for errors
    confidence: float
    mask_options: Any  # engine.detailer.masks.MaskOptions
    prompt: str  # may hold [SEP], [PROMPT], [SKIP]; empty = the image's prompt
    negative_prompt: str
    strength: float
    only_masked: bool
    padding: int
    mask_blur: int
    size: tuple[int, int]  # (width, height) of the inpaint pass
    num_inference_steps: int
    guidance_scale: float
    sampler: SamplerSpec
    noise_multiplier: float = 1.0
    clip_skip: int | None = None  # None: the request's
    checkpoint: str | None = None  # None: the generation's
    vae: str | None = None  # ad_vae, an `sd_vae` value for this unit's passes; None: the generation's
    face_restoration: FaceRestorationPlan | None = None  # ad_restore_face: after each inpaint
    # engine.control.units.ControlUnit: ADetailer's ControlNet (no image: the pass's), or the request's (Passthrough)
    controlnets: tuple = ()


@dataclass(frozen=True)
class RefinerPlan:
    """A1111's refiner (`apply_refiner`): once a pass is `switch_at` of the way through, the sampler goes on
    with another checkpoint's UNet and that checkpoint's conditioning."""

    checkpoint: str
    switch_at: float | None  # None: the refiner takes over from the first model call, as in A1111
    # A1111 `hires_fix_refiner_pass` with hires fix: "first pass", "second pass" or "both passes".
    hires_passes: str = "second pass"
    # A1111 `refiner_switch_by_sample_steps`: progress counted in model calls, not read from the timestep.
    by_sampling_steps: bool = False

    def applies_to(self, hires_enabled: bool, hires_pass: bool) -> bool:
        """Whether a pass may switch: every base pass without hires fix, else the passes the option names."""
        if not hires_enabled:
            return not hires_pass
        wanted = {"first pass": (False,), "second pass": (True,), "both passes": (False, True)}
        return hires_pass in wanted[self.hires_passes]


@dataclass(frozen=True)
class GenerationPlan:
    """One txt2img request. Lists hold one entry per output image (batch_size × n_iter)."""

    checkpoint: str | None
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    noise: NoiseSpec
    batch_size: int
    n_iter: int
    width: int  # already floored to a multiple of 8, as A1111's latent size makes it
    height: int
    num_inference_steps: int
    guidance_scale: float
    sampler: SamplerSpec
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    # `<lora:…>` and other extra-network tags, taken out of the positive prompts (A1111: from the first prompt).
    extra_networks: tuple[ExtraNetworkTag, ...] = ()
    loras: tuple[Any, ...] = ()  # engine.networks.LoraRequest, from the extra-network tags
    # The prompts as sent, tags included: A1111's infotext and `all_prompts` keep them, and ADetailer's inner
    # passes read them (empty: the same as `prompts`).
    prompts_as_written: tuple[str, ...] = ()
    extra_networks_enabled: bool = True  # False: `disable_extra_networks`, no pass activates any LoRA
    hires: HiresPlan | None = None
    init: InitPlan | None = None  # img2img
    control_units: tuple[Any, ...] = ()  # engine.control.units.ControlUnit: ControlNet / InstantID units
    vae: str | None = None  # override_settings.sd_vae: "Automatic", "None" or a VAE name (None = Automatic)
    vae_tiling: Any | None = None  # engine.imaging.vae_tiling.VaeTiling for this request; None: the worker's rule
    detailers: tuple[DetailerPlan, ...] = ()
    face_restoration: FaceRestorationPlan | None = None  # after each image is decoded, before ADetailer
    refiner: RefinerPlan | None = None
    face_swap: Any | None = None  # engine.faceswap.args.ReactorArgs: ReActor, after ADetailer
    tiling: bool = False  # A1111 `tiling`: circular padding in every UNet and VAE convolution
    # A1111's extra_generation_params for the infotext, in insertion order.
    infotext_extra: tuple[tuple[str, Any], ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch(self, iteration: int) -> slice:
        """The images generated together in iteration `iteration` (A1111's n_iter loop)."""
        return slice(iteration * self.batch_size, (iteration + 1) * self.batch_size)
