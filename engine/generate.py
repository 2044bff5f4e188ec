"""The generation recipe: a plan and loaded models in, images out. Each step calls one capability."""

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from PIL import Image

from engine.detailer.run import DetailTarget, detail_image
from engine.img2img import img2img_pass
from engine.networks.lora import lora_hashes_infotext
from engine.networks.session import LoraSession
from engine.passes import InitLatents, PassRequest, run_pass
from engine.pipeline import A1111Pipeline
from engine.plan import GenerationPlan, NoiseSpec
from engine.prompts.options import PassShape
from engine.refiner import RefinerStage
from engine.restore.step import restore_decoded
from engine.sampling.loop import StepCallback
from engine.stopping import StopSignal
from engine.upscale.latent import LatentUpscaler


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """Reported after every model call: `call` of `total` in `stage` ("base", "hires") of batch `iteration`."""

    iteration: int
    iterations: int
    call: int
    total: int | None
    stage: str = "base"


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    unet_calls: int
    control_calls: int = 0  # ControlNet / T2I-Adapter forwards (ADetailer's passes; the main ones are counted
    # by the request's ControlRequest)
    notes: list[str] = field(default_factory=list)  # reported to the client as warnings
    restorer_calls: int = 0  # face restoration network calls: one per restored face
    # Infotext entries the work itself produced (A1111 adds them while encoding prompts: TI hashes, Emphasis).
    extra_params: dict[str, str] = field(default_factory=dict)
    # The base and hires passes' LoRAs (A1111's `Lora hashes`: the first pass's, then hires fix's added).
    lora_hashes: dict[str, str] = field(default_factory=dict)

    def add(self, result) -> None:
        """Count a pass's model calls and keep the first pass's infotext entries and every new note."""
        self.unet_calls += result.unet_calls
        for key, value in result.extra_params.items():
            self.extra_params.setdefault(key, value)
        self.notes += [note for note in result.notes if note not in self.notes]

    def infotext_params(self) -> dict[str, str]:
        """The entries for the infotext, in A1111's order: `Lora hashes` (activation), then the passes'."""
        hashes = {"Lora hashes": lora_hashes_infotext(self.lora_hashes)} if self.lora_hashes else {}
        return {**hashes, **self.extra_params}


@dataclass(frozen=True)
class Models:
    """The loaded checkpoint(s) a plan runs on, and the upscalers hires fix may need."""

    base: A1111Pipeline
    hires: A1111Pipeline | None = None  # a different checkpoint for hires fix's second pass
    refiner: A1111Pipeline | None = None  # the refiner checkpoint (`refiner_checkpoint`)
    refiner_title: str | None = None  # its A1111 short title, "name [hash]", for the infotext
    upscaler: object | None = None  # the resolved hires upscaler (latent or pixel)
    # One (DetailerPlan, pipeline, detector, face restorer or None) per ADetailer unit, in order.
    detailers: tuple = ()
    embeddings: object | None = None  # the textual-inversion database (engine.prompts.embeddings)
    control: object | None = None  # engine.control.request.ControlRequest: ControlNet / InstantID units
    restorer: object | None = None  # engine.restore.registry.FaceRestorer for plan.face_restoration
    # (units, (width, height), seed) → ControlRequest: ADetailer's own ControlNet, prepared per inpaint pass.
    make_control: Callable | None = None
    loras: LoraSession | None = None  # the request's LoRAs, activated pass by pass; None: no LoRAs

    def pipelines(self) -> list[A1111Pipeline]:
        """Every checkpoint the request may run, each once (tiling pads all their convolutions)."""
        found = [self.base, self.hires, self.refiner, *(detailer[1] for detailer in self.detailers)]
        unique: dict[int, A1111Pipeline] = {}
        for pipe in found:
            if pipe is not None:
                unique.setdefault(id(pipe), pipe)
        return list(unique.values())

    def with_low_memory(self, vae_tiling, unet_rows_per_call: int) -> "Models":
        """The same models seen through lower-memory views (`A1111Pipeline.with_low_memory`); the shared
        pipelines are untouched."""
        views: dict[int, A1111Pipeline] = {}

        def view(pipe: A1111Pipeline | None) -> A1111Pipeline | None:
            if pipe is not None and id(pipe) not in views:
                views[id(pipe)] = pipe.with_low_memory(vae_tiling, unet_rows_per_call)
            return views[id(pipe)] if pipe is not None else None

        return replace(
            self,
            base=view(self.base),
            hires=view(self.hires),
            refiner=view(self.refiner),
            detailers=tuple((unit, view(pipe), detector) for unit, pipe, detector in self.detailers),
        )


@torch.no_grad()
def generate(
    plan: GenerationPlan,
    models: Models,
    on_progress: Callable[[Progress], None] | None = None,
    stop: StopSignal | None = None,
) -> GenerationOutput:
    """Run a plan, one batch per A1111 iteration (`n_iter`): base pass (txt2img or img2img), hires fix,
    decode, face restoration, then ADetailer on each finished image.

    `stop` ends sampling early as A1111's interrupt and skip do (see `engine.stopping`): the pass under way
    returns its latest denoised estimate, which is decoded and kept; after an interrupt (or timeout) no hires
    pass or later batch runs, after a skip the next batch runs normally. Each cut is noted in the output.
    """
    stop = stop or StopSignal()
    output = GenerationOutput([], 0)
    for iteration in range(plan.n_iter):
        stop.begin_iteration()
        if stop.interrupted:
            output.notes.append(f"{stop.reason}: {_not_generated(iteration, plan.n_iter)}")
            break
        batch = plan.batch(iteration)
        noise = _batch_noise(plan.noise, batch)
        progress = partial(_progress, on_progress, iteration, plan.n_iter)
        # ControlNet / InstantID: the IP-Adapter sits in the UNets for the base and hires passes only
        # (ADetailer's inner passes run without the extension's units, as ADetailer runs them by default).
        with _control_applied(models):
            if plan.init is not None:
                # 1. img2img / inpainting: the base pass starts from the init images; no hires fix. It restores
                # faces itself, between decode and pasting back into the original.
                base = _base_pass(plan, batch)
                _use_loras(models, models.base, plan.loras, output)
                refiner = refiner_stage(plan, models, models.base, hires_pass=False)
                images = img2img_pass(
                    models, plan, batch, noise, base, progress("base"), output, refiner, stop
                )
            else:
                # 1–2. Base pass from noise, then hires fix; 3. decode; 4. face restoration (A1111 restores
                # each decoded image before the scripts' postprocess_image).
                latents, pipe = _txt2img(plan, models, batch, noise, progress, output, stop)
                images = pipe.decode_to_images(latents)
                if models.control is not None:
                    # sd-webui-controlnet's pixel steps (postprocess_batch_list) come before face restoration.
                    images = models.control.postprocess(images, *images[0].size)
                images = restore_decoded(
                    images, models.restorer, plan.face_restoration, noise.seeds, batch.start, output
                )

        # 5. ADetailer: on every finished image (after hires fix), as A1111's postprocess_image hook.
        output.images += _detail_all(plan, models, images, batch, progress("adetailer"), output, stop)
        if stop.took_effect():
            output.notes.append(
                f"{stop.reason}: the images of batch {iteration + 1} of {plan.n_iter} are unfinished"
            )
    return output


def _base_pass(plan: GenerationPlan, batch: slice) -> PassRequest:
    return PassRequest(
        prompts=list(plan.prompts[batch]),
        negative_prompts=list(plan.negative_prompts[batch]),
        width=plan.width,
        height=plan.height,
        sampler=plan.sampler,
        steps_total=plan.num_inference_steps,
        steps_run=plan.num_inference_steps,
        guidance_scale=plan.guidance_scale,
        prompt_options=plan.prompt_options,
        shape=PassShape(plan.height, plan.width, plan.num_inference_steps, plan.sampler.choice.second_order),
    )


def _txt2img(plan: GenerationPlan, models: Models, batch: slice, noise: NoiseSpec, progress, output, stop):
    """The base pass from noise and, when asked, hires fix's second pass, each handing over to the refiner
    where A1111 would. Returns (latents, the pipeline whose VAE decodes them)."""
    base = _base_pass(plan, batch)
    _use_loras(models, models.base, plan.loras, output)
    result = run_pass(
        models.base,
        base,
        noise,
        None,
        progress("base"),
        models.embeddings,
        models.control,
        refiner=refiner_stage(plan, models, models.base, hires_pass=False),
        should_stop=stop.requested,
    )
    output.add(result)
    # A1111 decodes with the checkpoint loaded when the pass ends: the refiner's VAE after a switch.
    first_pipe = models.refiner if result.refined else models.base
    # An interrupted job keeps its first-pass latents (A1111 `sample_hr_pass`); a skipped one still upscales,
    # and its second pass stops at once with the upscaled latents.
    if plan.hires is None or stop.interrupted:
        return result.latents, first_pipe

    # Hires fix: upscale, then a second pass from the upscaled latents with fresh noise from the same seeds.
    hires = plan.hires
    pipe = models.hires or models.base
    latents = upscale_for_hires(plan, models, result.latents, noise, decoder=first_pipe)
    if hires.schedule_length == 0:
        # Denoising strength 0: A1111's sampler gets the sigmas [0] and runs no step, so the upscaled latents
        # are decoded as they are (no fresh noise is added either: it is scaled by sigma 0).
        return latents, pipe
    width, height = hires.output_size
    second = replace(
        base,
        prompts=list(hires.prompts[batch]),
        negative_prompts=list(hires.negative_prompts[batch]),
        width=width,
        height=height,
        sampler=hires.sampler,
        steps_total=hires.schedule_length,
        steps_run=hires.num_inference_steps,
        # A1111 conditions the pass at hr_upscale_to_x/y, the size before the centre crop.
        shape=base.shape.hires_pass(
            hires.height, hires.width, hires.num_inference_steps, hires.sampler.choice.second_order
        ),
    )
    # A1111 activates the networks of hr_prompt for this pass (the first pass's when hr_prompt is empty).
    _use_loras(models, pipe, hires.loras, output)
    result = run_pass(
        pipe,
        second,
        noise,
        InitLatents(latents),
        progress("hires"),
        models.embeddings,
        models.control,
        refiner=refiner_stage(plan, models, pipe, hires_pass=True),
        should_stop=stop.requested,
    )
    output.add(result)
    return result.latents, models.refiner if result.refined else pipe


def _use_loras(models: Models, pipe: A1111Pipeline, requests, output: GenerationOutput) -> None:
    """Activate a base or hires pass's LoRAs; their hashes join the infotext's `Lora hashes`."""
    if models.loras is None:
        return
    applied = models.loras.use(pipe, requests)
    output.lora_hashes.update(applied.hashes)


def refiner_stage(plan: GenerationPlan, models: Models, pipe: A1111Pipeline, hires_pass: bool):
    """The refiner hand-over for a pass, or None when A1111 would not switch in it: no refiner, a pass the
    `hires_fix_refiner_pass` option leaves out, or a pass already running on the refiner checkpoint."""
    refiner = plan.refiner
    if refiner is None or models.refiner is None or models.refiner.unet is pipe.unet:
        return None
    if not refiner.applies_to(plan.hires is not None, hires_pass):
        return None
    infotext = [("Refiner", models.refiner_title), ("Refiner switch at", refiner.switch_at)]
    if plan.hires is not None and refiner.hires_passes != "second pass":
        infotext.insert(0, ("Hires refiner", refiner.hires_passes))
    # The refiner runs without request LoRAs (A1111's networks do not fit its layers); they leave the modules
    # it may share with this checkpoint (OpenCLIP-G) before it encodes its prompts.
    loras = models.loras
    return RefinerStage(
        models.refiner,
        refiner.switch_at,
        refiner.by_sampling_steps,
        tuple(infotext),
        before_switch=(lambda: loras.use(models.refiner, ())) if loras is not None else None,
    )


def _control_applied(models: Models):
    if models.control is None:
        return nullcontext()
    unets = [models.base.unet] + ([models.hires.unet] if models.hires is not None else [])
    return models.control.applied(*unets)


def _detail_all(plan, models, images, batch, progress, output, stop):
    if not models.detailers:
        return images
    return [
        _detail(plan, models, image, batch.start + i, progress, output, stop) for i, image in enumerate(images)
    ]


def _detail(plan: GenerationPlan, models: Models, image, index: int, progress, output: GenerationOutput, stop):
    target = DetailTarget(
        image=image,
        index=index,
        # ADetailer reads `p.all_prompts`: the prompt as written, its `<lora:…>` tags active again inside.
        prompt=(plan.prompts_as_written or plan.prompts)[index],
        negative_prompt=plan.negative_prompts[index],
        noise=_batch_noise(plan.noise, slice(index, index + 1)),
    )
    networks = models.loras if plan.extra_networks_enabled else None
    return detail_image(
        target,
        models.detailers,
        plan.prompt_options,
        progress,
        models.embeddings,
        output,
        networks,
        models.make_control,
        should_stop=stop.requested,
    )


def upscale_for_hires(
    plan: GenerationPlan, models: Models, latents: torch.Tensor, noise: NoiseSpec, decoder=None
):
    """A1111 `sample_hr_pass`: resize the latents (latent modes) or decode → upscale the images → encode,
    then cut the centre when both hr_resize_x and hr_resize_y were given. `decoder` is the pipeline that
    finished the first pass (the base, or the refiner), whose VAE decodes for a pixel upscaler."""
    hires = plan.hires
    upscaler = models.upscaler
    if isinstance(upscaler, LatentUpscaler):
        upscaled = upscaler.upscale_latents(latents, hires.width, hires.height)
    else:
        images = (decoder or models.base).decode_to_images(latents)
        resized = [upscaler.resize(image, hires.width, hires.height) for image in images]
        pipe = models.hires or models.base
        # A1111 samples the VAE posterior with the global CPU RNG, last seeded by the batch's last seed.
        upscaled = pipe.encode_images(resized, torch.Generator("cpu").manual_seed(int(noise.seeds[-1])))
    crop_x, crop_y = hires.crop
    height, width = upscaled.shape[2], upscaled.shape[3]
    return upscaled[:, :, crop_y // 2 : height - (crop_y + 1) // 2, crop_x // 2 : width - (crop_x + 1) // 2]


def _not_generated(first: int, iterations: int) -> str:
    if first + 1 == iterations:
        return f"batch {iterations} of {iterations} was not generated"
    return f"batches {first + 1} to {iterations} of {iterations} were not generated"


def _batch_noise(noise: NoiseSpec, batch: slice) -> NoiseSpec:
    return replace(noise, seeds=noise.seeds[batch], subseeds=noise.subseeds[batch])


def _progress(on_progress, iteration: int, iterations: int, stage: str) -> StepCallback | None:
    if on_progress is None:
        return None
    return lambda call, total, latents: on_progress(Progress(iteration, iterations, call, total, stage))
