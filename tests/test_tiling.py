"""`tiling`: seamless images as A1111 makes them (`sd_hijack.apply_circular`: every UNet and VAE Conv2d pads
circularly), for one request only.

Circular padding makes the whole txt2img computation commute with shifts on the torus: the UNet's strided
convolutions, attention and group norms, and the VAE decoder's upsampling all do. So an image generated from
noise rolled by half the latent is the image rolled by half its size, its edges meeting seamlessly; with zero
padding it is not.
"""

import json

import numpy as np
import pytest
import torch

import engine.passes
from engine.sampling.noise import ImageNoise


PAYLOAD = {"prompt": "a tiled floor", "seed": 9, "steps": 3, "width": 128, "height": 128, "sampler_name": "Euler",
           "cfg_scale": 5}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HalfRolledNoise(ImageNoise):
    """The initial noise of the same seeds, rolled by half the latent's height and width."""

    def first(self):
        noise = super().first()
        return torch.roll(noise, shifts=(noise.shape[-2] // 2, noise.shape[-1] // 2), dims=(-2, -1))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def convolutions(*modules):
    return [layer for module in modules for layer in module.modules() if type(layer) is torch.nn.Conv2d]


@pytest.mark.parametrize("tiling", [True, False])
def test_rolled_noise_gives_the_rolled_image_only_when_tiling(sd15_engine, monkeypatch, tiling):
    payload = {**PAYLOAD, "tiling": tiling}
    image = pixels(sd15_engine.txt2img(payload))
    monkeypatch.setattr(engine.passes, "ImageNoise", HalfRolledNoise)
    rolled = pixels(sd15_engine.txt2img(payload))
    shifted = np.roll(image, shift=(64, 64), axis=(0, 1))
    if tiling:
        # The same picture on a torus: what was the image's corner is now its centre, without a seam.
        assert np.abs(rolled - shifted).max() <= 1
    else:
        assert np.abs(rolled - shifted).max() > 20


def test_every_convolution_pads_circularly_during_the_request_and_is_restored(sd15_engine):
    pipes = [sd15_engine.pipelines.get(sd15_engine.catalog.find_checkpoint(name))
             for name in ("tiny-sd15", "tiny-sd15_inpainting")]
    layers = convolutions(*(module for pipe in pipes for module in (pipe.unet, pipe.vae)))
    before = [layer.padding_mode for layer in layers]
    assert set(before) == {"zeros"}
    seen = []

    def modes(module, args):
        seen.append({layer.padding_mode for layer in convolutions(module)})

    handles = [module.register_forward_pre_hook(modes)
               for pipe in pipes for module in (pipe.unet, pipe.vae.decoder, pipe.vae.encoder)]
    try:
        payload = {**PAYLOAD, "width": 64, "height": 64, "enable_hr": True, "denoising_strength": 0.5,
                   "hr_checkpoint_name": "tiny-sd15_inpainting", "hr_upscaler": "Lanczos", "hr_scale": 1.5,
                   "override_settings": {"tiling": True}}
        result = sd15_engine.txt2img({k: v for k, v in payload.items() if k != "tiling"})
    finally:
        for handle in handles:
            handle.remove()
    # Base and hires checkpoints, UNets, VAE decoders and the hires pass's VAE encoder: all circular.
    assert len(seen) > 6 and all(used == {"circular"} for used in seen)
    assert [layer.padding_mode for layer in layers] == before
    assert "Tiling: True" in json.loads(result.info)["infotexts"][0]


class Cancelled(Exception):
    pass


def test_padding_is_restored_when_the_request_fails_midway(sd15_engine):
    pipe = sd15_engine.pipelines.get(sd15_engine.catalog.find_checkpoint("tiny-sd15"))
    layers = convolutions(pipe.unet, pipe.vae)
    during = []

    def stop(progress):
        during.append({layer.padding_mode for layer in layers})
        if progress.call == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        sd15_engine.txt2img({**PAYLOAD, "width": 64, "height": 64, "tiling": True}, on_progress=stop)
    assert during and all(modes == {"circular"} for modes in during)
    assert {layer.padding_mode for layer in layers} == {"zeros"}
    plain = sd15_engine.txt2img({**PAYLOAD, "width": 64, "height": 64})
    assert "Tiling" not in json.loads(plain.info)["infotexts"][0]
