"""One denoising pass over a batch — txt2img, hires fix, img2img and inpainting all run through `run_pass`."""

from dataclasses import dataclass, field, replace

import torch

from engine.pipeline import A1111Pipeline
from engine.plan import NoiseSpec, SamplerSpec
from engine.prompts import parse_prompt_attention
from engine.prompts.conditioning import build_conditioning
from engine.prompts.options import PassShape, PromptOptions
from engine.refiner import RefinerStage, SwitchingUNet
from engine.sampling.guidance import GuidedUNet
from engine.sampling.loop import StepCallback, StopCheck, denoise
from engine.sampling.noise import ImageNoise
from engine.sampling.schedulers import prepare_sampler
from engine.sampling.step_cache import StepCache


LATENT_CHANNELS = 4


@dataclass(frozen=True)
class PassRequest:
    """One denoising pass over a batch, in diffusers' terms."""

    prompts: list[str]
    negative_prompts: list[str]
    width: int
    height: int
    sampler: SamplerSpec
    steps_total: int  # schedule length
    steps_run: int  # the last `steps_run` steps of it are run (txt2img: all)
    guidance_scale: float
    prompt_options: PromptOptions
    shape: PassShape  # size and step counting for the prompts' conditioning
    noise_multiplier: float = 1.0  # A1111 `initial_noise_multiplier` (img2img)


@dataclass(frozen=True)
class InitLatents:
    """Where an img2img pass starts: the encoded image, and for inpainting the latent mask (1 = repaint).

    `image_conditioning` is an inpainting checkpoint's extra UNet input (`pipe.inpainting_conditioning`); None
    lets `run_pass` give such a checkpoint the fully masked gray one (hires fix, as A1111 does).
    """

    latents: torch.Tensor
    repaint_mask: torch.Tensor | None = None
    image_conditioning: torch.Tensor | None = None

    def blend(self, latents: torch.Tensor) -> torch.Tensor:
        """Keep the original outside the mask (A1111's `denoised·nmask + init·mask`)."""
        if self.repaint_mask is None:
            return latents
        return latents * self.repaint_mask + self.latents * (1 - self.repaint_mask)


@dataclass(frozen=True)
class PassResult:
    latents: torch.Tensor
    unet_calls: int
    # What encoding the prompts reported: infotext entries (`TI hashes`, `Emphasis`) and response notes.
    extra_params: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    refined: bool = False  # the refiner finished the pass: decode with its VAE, as A1111 does


def run_pass(
    pipe: A1111Pipeline,
    request: PassRequest,
    noise: NoiseSpec,
    init: InitLatents | None = None,
    on_step: StepCallback | None = None,
    embeddings=None,
    control=None,
    refiner: RefinerStage | None = None,
    should_stop: StopCheck | None = None,
) -> PassResult:
    """Denoise one batch: fresh per-image noise at this pass's size (A1111 draws it anew for hires fix and
    img2img, from the same seeds), a fresh sampler, the prompts' conditioning, then the loop. With a
    `refiner` stage the loop continues on the refiner's UNet from A1111's switch point. When `should_stop`
    ends the loop early, the result is the latest denoised estimate (see `denoise`)."""
    device = pipe.unet.device
    latent_shape = (
        LATENT_CHANNELS,
        request.height // pipe.vae_scale_factor,
        request.width // pipe.vae_scale_factor,
    )
    image_noise = ImageNoise(
        latent_shape,
        list(noise.seeds),
        subseeds=list(noise.subseeds),
        subseed_strength=noise.subseed_strength,
        seed_resize_from=noise.seed_resize_from,
        device=device,
        source=noise.source,
        ensd=noise.eta_noise_seed_delta,
    )
    initial = image_noise.first() * request.noise_multiplier
    sampler = prepare_sampler(
        request.sampler.choice,
        steps_total=request.steps_total,
        steps_run=request.steps_run,
        scheduler_config=dict(pipe.scheduler.config),
        seeds=list(noise.seeds),
        generators=image_noise.generators,
        # Align Your Steps has separate SD1.5 and SDXL tables; only the loaded model knows which applies.
        options=replace(request.sampler.options, sdxl=pipe.is_sdxl),
        device=device,
        img2img=init is not None,
    )
    conditioning = _conditioning(pipe, request, embeddings)
    stack = None
    if control is not None:
        stack = control.stack_for_pass(
            pipe.unet,
            request.width,
            request.height,
            steps=request.steps_run,
            second_order=request.sampler.choice.second_order,
            hires=request.shape.hires,
            pipe=pipe,
        )
        if not request.shape.hires:
            initial = control.initial_noise(initial, pipe)
    image_conditioning = _image_conditioning(pipe, request, noise, init)
    unet = GuidedUNet(
        pipe.unet,
        request.guidance_scale,
        conditioning,
        control=stack,
        image_conditioning=image_conditioning,
        rows_per_call=pipe.unet_rows_per_call,
        step_cache=_step_cache(pipe),
    )
    start = initial * sampler.start_sigma
    # What a stop before the first model call leaves (A1111's `last_latent` before sampling starts).
    sampler.last_denoised = start
    if init is not None:
        init = replace(init, latents=init.latents.to(device=device, dtype=torch.float32))
        start = init.latents + start
        sampler.last_denoised = init.latents
        if init.repaint_mask is not None:
            sampler.denoised_filter = init.blend
    predictor = unet
    if refiner is not None:
        # A1111's `total_steps` for the pass: the steps it samples, doubled for second-order samplers.
        counted = request.steps_run * (2 if request.sampler.choice.second_order else 1)
        predictor = SwitchingUNet(
            unet, refiner, sampler, counted, lambda: _refiner_unet(refiner.pipe, request, embeddings)
        )
    latents = denoise(sampler, start, predictor, on_step, should_stop)
    # A1111 blends once more after sampling, so unmasked latents are exactly the original's.
    latents = init.blend(latents) if init is not None else latents
    extra, notes = dict(conditioning.extra_generation_params), conditioning.notes
    if pipe.step_caching is not None:
        extra.update(pipe.step_caching.infotext())  # it changes pixels: the image says how it was made
    if refiner is not None and refiner.by_sampling_steps:
        # A1111 writes it at the first model call of a pass that may switch, whether it switches or not.
        extra["Refiner switch by sampling steps"] = True
    refined = isinstance(predictor, SwitchingUNet) and predictor.switch_call is not None
    if refined:
        extra.update(predictor.refined.conditioning_at.extra_generation_params)
        extra.update((key, value) for key, value in refiner.infotext if value is not None)
        notes += predictor.refined.conditioning_at.notes
    return PassResult(latents, predictor.calls, extra, notes, refined=refined)


def _refiner_unet(pipe: A1111Pipeline, request: PassRequest, embeddings) -> GuidedUNet:
    """The refiner's guided UNet: the same prompts encoded by its own text encoder(s), at this pass's size
    and step count (A1111 `setup_conds` on the refiner), with its own added conditions (aesthetic score)."""
    conditioning = _conditioning(pipe, request, embeddings)
    return GuidedUNet(
        pipe.unet,
        request.guidance_scale,
        conditioning,
        rows_per_call=pipe.unet_rows_per_call,
        step_cache=_step_cache(pipe),
    )


def _step_cache(pipe: A1111Pipeline) -> StepCache | None:
    """A fresh DeepCache state for one pass (each pass, hires fix and refiner included, starts with a full UNet
    call), or None when the worker does not cache steps."""
    if pipe.step_caching is None:
        return None
    return StepCache(pipe.unet, pipe.step_caching)


def _conditioning(pipe: A1111Pipeline, request: PassRequest, embeddings):
    """This pass's prompts encoded by `pipe`'s text encoder(s) (A1111 `setup_conds`)."""
    return build_conditioning(
        pipe,
        request.prompts,
        request.negative_prompts,
        request.shape,
        request.prompt_options,
        parse=parse_prompt_attention,
        embeddings=embeddings,
    )


def _image_conditioning(pipe: A1111Pipeline, request: PassRequest, noise: NoiseSpec, init: InitLatents | None):
    """The inpainting UNet's mask + masked-image input: the caller's, else (txt2img, hires fix) A1111's
    `txt2img_image_conditioning`, its VAE sample drawn from the global RNG last seeded by the last seed."""
    if not pipe.is_inpainting:
        return None
    if init is not None and init.image_conditioning is not None:
        return init.image_conditioning
    generator = torch.Generator("cpu").manual_seed(int(noise.seeds[-1]))
    return pipe.full_mask_conditioning(len(request.prompts), request.width, request.height, generator)
