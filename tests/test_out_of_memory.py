"""Out of memory during a pass or in the VAE: memory freed, the request retried once with lower-memory settings
(VAE tiles, one UNet row per call) on views of the shared pipeline, else one clear error; the next request runs
at full speed with the shared pipeline unchanged.

The fault is injected at the model edge (the device cannot be filled here): a module's `forward` raises a real
`torch.OutOfMemoryError` when its input is larger than the "device" can hold.
"""

import contextlib
import weakref

import numpy as np
import pytest
import torch

import handler
from engine.errors import OutOfMemory
from engine.generate import Models
from engine.imaging.vae_tiling import VaeTiling
from engine.memory import LOW_MEMORY_VAE_TILING, RETRY_NOTE, run_with_memory_fallback
from engine.sampling.guidance import Rows


INJECTED = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.64 GiB (injected)"
# Two images, one with an AND prompt: the CFG batch has 5 rows (3 cond, 2 uncond).
PAYLOAD = {
    "prompt": ["a red fox AND a cat :0.5", "a blue bird"],
    "negative_prompt": "blurry",
    "seed": 5,
    "steps": 2,
    "width": 64,
    "height": 64,
    "batch_size": 2,
    "sampler_name": "Euler a",
    "cfg_scale": 6,
}


@contextlib.contextmanager
def out_of_memory_when(module: torch.nn.Module, too_big):
    """Make `module` raise CUDA's out-of-memory error for every input `too_big(input)` says does not fit."""
    original = module.forward

    def forward(sample, *args, **kwargs):
        if too_big(sample):
            raise torch.OutOfMemoryError(INJECTED)
        return original(sample, *args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextlib.contextmanager
def recorded_inputs(module: torch.nn.Module):
    """The shapes of every input `module` receives in the block."""
    shapes = []
    handle = module.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        yield shapes
    finally:
        handle.remove()


def shared_pipeline(engine):
    return engine._pipelines.get(engine.resolve_checkpoint(None))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_rows_split_into_their_own_layouts():
    rows = Rows(cond_images=(0, 0, 1), uncond_images=range(2))
    assert rows.sliced(slice(0, 2)) == Rows((0, 0), ())
    assert rows.sliced(slice(2, 4)) == Rows((1,), (0,))
    assert rows.sliced(slice(4, 6)) == Rows((), (1,))


def test_low_memory_views_cover_every_checkpoint_and_share_its_modules(sd15_engine):
    pipe = shared_pipeline(sd15_engine)
    models = Models(base=pipe, hires=pipe, refiner=pipe, detailers=((None, pipe, None),))
    low = models.with_low_memory(LOW_MEMORY_VAE_TILING, 1)
    assert low.base is low.hires is low.refiner is low.detailers[0][1] and low.base is not pipe
    assert low.base.unet is pipe.unet and low.base.vae is pipe.vae and low.base.text_encoder is pipe.text_encoder
    assert low.base.unet_rows_per_call == 1 and low.base.vae_tiling == LOW_MEMORY_VAE_TILING
    assert pipe.unet_rows_per_call is None and pipe.vae_tiling != LOW_MEMORY_VAE_TILING


def test_unet_out_of_memory_is_retried_one_row_at_a_time(sd15_engine):
    engine = sd15_engine
    pipe = shared_pipeline(engine)
    tiling = pipe.vae_tiling
    reference = engine.txt2img(PAYLOAD)
    failed_inputs = []

    def too_big(sample) -> bool:
        if failed_inputs:
            # By the retry's first call, the failed attempt's tensors have been released.
            assert failed_inputs[0]() is None
        if len(sample) > 1:
            failed_inputs.append(weakref.ref(sample))
            return True
        return False

    with out_of_memory_when(pipe.unet, too_big), recorded_inputs(pipe.unet) as rows:
        retried = engine.txt2img(PAYLOAD)
    failed, *retry = rows
    assert len(failed_inputs) == 1 and failed[0] == 5 and retry and all(shape[0] == 1 for shape in retry)
    assert retried.warnings[0] == RETRY_NOTE.format(error="CUDA out of memory. Tried to allocate 2.00 GiB")
    # One row per call changes float rounding only (documented in the warning).
    for got, expected in zip(retried.images, reference.images, strict=True):
        assert np.abs(pixels(got) - pixels(expected)).max() <= 2

    # Nothing of the retry stayed on the shared pipeline: the next request batches all 5 rows again.
    assert pipe.unet_rows_per_call is None and pipe.vae_tiling == tiling
    with recorded_inputs(pipe.unet) as rows:
        again = engine.txt2img(PAYLOAD)
    assert {shape[0] for shape in rows} == {5} and again.warnings == []
    assert [image.tobytes() for image in again.images] == [image.tobytes() for image in reference.images]


def test_vae_out_of_memory_is_retried_in_tiles(sd15_engine):
    """A decode too large for the device: the retry decodes 512-pixel tiles (whose pixels differ slightly
    from a whole decode: each tile has its own GroupNorm statistics, as the warning says)."""
    engine = sd15_engine
    pipe = shared_pipeline(engine)
    wide = {**PAYLOAD, "prompt": "a red fox", "batch_size": 1, "width": 576, "height": 64}
    tile_latent = LOW_MEMORY_VAE_TILING.tile_size // pipe.vae_scale_factor
    with (
        out_of_memory_when(pipe.vae.decoder, lambda sample: sample.shape[-1] > tile_latent),
        recorded_inputs(pipe.vae.decoder) as decoded,
    ):
        retried = engine.txt2img(wide)
    assert retried.images[0].size == (576, 64) and "the VAE in 512-pixel tiles" in retried.warnings[0]
    # The whole decode failed, then two overlapping tiles across the width.
    assert decoded == [(1, 4, 8, 72), (1, 4, 8, tile_latent), (1, 4, 8, tile_latent)]
    with recorded_inputs(pipe.vae.decoder) as decoded:
        whole = engine.txt2img(wide)
    assert decoded == [(1, 4, 8, 72)] and whole.warnings == []  # whole again: the retry left no tiling on
    assert 0 < np.abs(pixels(whole.images[0]) - pixels(retried.images[0])).mean() < 10


def test_vae_encode_out_of_memory_is_retried(sd15_engine):
    engine = sd15_engine
    pipe = shared_pipeline(engine)
    init = engine.txt2img({**PAYLOAD, "batch_size": 1, "prompt": "a red fox"}).images[0]
    from engine.imaging.png import encode_base64

    payload = {**PAYLOAD, "batch_size": 1, "prompt": "a cat", "init_images": [encode_base64(init, None)],
               "denoising_strength": 0.6}
    reference = engine.img2img(payload)
    calls = []
    with out_of_memory_when(pipe.vae.encoder, lambda sample: not calls and not calls.append(1)):
        retried = engine.img2img(payload)
    assert retried.warnings[0].startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert np.abs(pixels(retried.images[0]) - pixels(reference.images[0])).max() <= 2


def test_out_of_memory_twice_is_one_clear_error_and_the_worker_goes_on(sd15_engine):
    engine = sd15_engine
    pipe = shared_pipeline(engine)
    reference = engine.txt2img(PAYLOAD)
    job = {"id": "oom", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": PAYLOAD}}
    with out_of_memory_when(pipe.unet, lambda sample: True):
        output = handler.serve_job(job, engine)
    # An OutOfMemory error (the handler answers every EngineError so); no fresh worker: the device is usable.
    assert output == {
        "error": "out of memory even with lower-memory settings (CUDA out of memory. Tried to allocate "
        "2.00 GiB); ask for fewer or smaller images"
    }
    assert engine.jobs.progress()["current_task"] is None
    assert pipe.unet_rows_per_call is None and pipe.vae_tiling == VaeTiling(above_pixels=None)
    again = engine.txt2img(PAYLOAD)
    assert again.warnings == []
    assert [image.tobytes() for image in again.images] == [image.tobytes() for image in reference.images]


def test_only_out_of_memory_errors_are_retried():
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1 TB")
    attempts = []

    def always(error):
        def attempt(low_memory: bool):
            attempts.append(low_memory)
            raise error

        return attempt

    with pytest.raises(OutOfMemory, match=r"^out of memory even with lower-memory settings \(\[enforce"):
        run_with_memory_fallback(always(cpu), torch.device("cpu"))
    assert attempts == [False, True]
    attempts.clear()
    with pytest.raises(RuntimeError, match="^a bug$"):  # anything else is not retried
        run_with_memory_fallback(always(RuntimeError("a bug")), torch.device("cpu"))
    assert attempts == [False]
