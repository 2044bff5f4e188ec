"""Seed 002 on an H100: FLOPs counted on the real architectures × the work the request does, → seconds.

    python bench/h100_estimate.py [--mfu 0.4 0.6]

Seed 002 (`tests/fixtures/seeds/002_*.txt`): SDXL 960×1280, 15 steps DPM++ SDE Karras, CFG 4.5, InstantID (IP-Adapter
+ IdentityNet ControlNet, both passes), hires 1.6× → 1536×2048 with R-ESRGAN 4x+, denoise 0.05, 15 hires steps.
Work (what the engine runs, = A1111's, counted with hooks in `bench/instantid_cost.py`): DPM++ SDE makes 2N − 1 = 29
evaluations per pass, each one CFG batch of 2 through the UNet and the ControlNet; the VAE decodes the base image,
encodes the upscaled one and decodes the result; ESRGAN runs once on the 960×1280 image.

FLOPs per forward come from `torch.utils.flop_counter.FlopCounterMode` on the meta device (no weights, no memory)
with the real diffusers configs of SDXL's UNet, a full-size SDXL ControlNet (`ControlNetModel.from_unet`, the
IdentityNet's size) and the SDXL VAE, and spandrel's RRDBNet (23 blocks, 64 features). The IP-Adapter's extra
image-token attention (16 tokens) is left out (< 1 % of the UNet).

Rates: H100 SXM dense BF16/FP16 tensor-core peak 989.4 TFLOP/s (NVIDIA H100 datasheet: 1 979 TFLOP/s "with
sparsity", half that dense). Achieved fractions: ≈ 40 % for eager PyTorch SDPA and ≈ 55–60 % compiled, from the
published SDXL A100 timings in diffusers' "Accelerate inference of text-to-image diffusion models" tutorial
(3.31 s eager SDPA, 2.54 s compiled for 30 steps at 1024² = 416 TFLOP → 40 % and 53 % of 312 TFLOP/s).
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.demo.full_size import UNET_CONFIGS, VAE_CONFIG  # noqa: E402


H100_DENSE_TFLOPS = 989.4
# Seed 002's work.
STEPS, BASE, HIRES = 15, (960, 1280), (1536, 2048)
EVALS = 2 * STEPS - 1  # DPM++ SDE: the last step is Euler
CFG_ROWS = 2


def gflop(module, *args, **kwargs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args, **kwargs)
    return counter.get_total_flops() / 1e9


def denoiser_gflop(unet, controlnet, size) -> tuple[float, float]:
    """One sample (batch 1) through the UNet and through the ControlNet at `size` = (width, height) pixels."""
    width, height = size
    with torch.device("meta"):
        x = torch.zeros(1, 4, height // 8, width // 8)
        t = torch.zeros(1)
        context = torch.zeros(1, 77, 2048)
        added = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
        hint = torch.zeros(1, 3, height, width)
    unet_g = gflop(unet, x, t, encoder_hidden_states=context, added_cond_kwargs=added)
    # InstantID's IdentityNet attends to 16 face tokens instead of the prompt.
    faces = torch.zeros(1, 16, 2048, device="meta")
    control_g = gflop(controlnet, x, t, encoder_hidden_states=faces, controlnet_cond=hint, added_cond_kwargs=added)
    return unet_g, control_g


def vae_gflop(vae, size) -> tuple[float, float]:
    width, height = size
    with torch.device("meta"):
        latent = torch.zeros(1, 4, height // 8, width // 8)
        pixels = torch.zeros(1, 3, height, width)
    return gflop(vae.decode, latent), gflop(vae.encode, pixels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.4, 0.6])
    args = parser.parse_args()
    started = time.perf_counter()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS["sdxl"]).eval()
        controlnet = ControlNetModel.from_unet(unet).eval()
        vae = AutoencoderKL(**VAE_CONFIG).eval()
        esrgan = RRDBNet(num_filters=64, num_blocks=23, scale=4).eval()
    base_unet, base_cn = denoiser_gflop(unet, controlnet, BASE)
    hires_unet, hires_cn = denoiser_gflop(unet, controlnet, HIRES)
    base_decode, _ = vae_gflop(vae, BASE)
    hires_decode, hires_encode = vae_gflop(vae, HIRES)
    esrgan_g = gflop(esrgan, torch.zeros(1, 3, BASE[1], BASE[0], device="meta"))
    rows = [
        ("base UNet", f"{EVALS} × {CFG_ROWS} × {base_unet:,.0f}", EVALS * CFG_ROWS * base_unet),
        ("base ControlNet", f"{EVALS} × {CFG_ROWS} × {base_cn:,.0f}", EVALS * CFG_ROWS * base_cn),
        ("VAE decode 960×1280", f"1 × {base_decode:,.0f}", base_decode),
        ("R-ESRGAN 4x+ on 960×1280", f"1 × {esrgan_g:,.0f}", esrgan_g),
        ("VAE encode 1536×2048", f"1 × {hires_encode:,.0f}", hires_encode),
        ("hires UNet", f"{EVALS} × {CFG_ROWS} × {hires_unet:,.0f}", EVALS * CFG_ROWS * hires_unet),
        ("hires ControlNet", f"{EVALS} × {CFG_ROWS} × {hires_cn:,.0f}", EVALS * CFG_ROWS * hires_cn),
        ("VAE decode 1536×2048", f"1 × {hires_decode:,.0f}", hires_decode),
    ]
    total = sum(value for *_, value in rows)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, python "
          f"{platform.python_version()}, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"counted in {time.perf_counter() - started:.0f} s on the meta device\n")
    print("| stage | forwards × rows × GFLOP per row | TFLOP |\n|---|---|---|")
    for name, formula, value in rows:
        print(f"| {name} | {formula} | {value / 1000:,.1f} |")
    print(f"| **total** | | **{total / 1000:,.0f}** |\n")
    print("| H100 SXM (989.4 TFLOP/s dense) | seconds of GPU work |\n|---|---|")
    print(f"| 100 % (physical floor) | {total / 1000 / H100_DENSE_TFLOPS:.2f} |")
    for mfu in args.mfu:
        print(f"| {mfu:.0%} of peak | {total / 1000 / (H100_DENSE_TFLOPS * mfu):.2f} |")
    per_step = {"base": (base_unet + base_cn) * CFG_ROWS, "hires": (hires_unet + hires_cn) * CFG_ROWS}
    for name, value in per_step.items():
        rates = ", ".join(f"{H100_DENSE_TFLOPS * mfu * 1000 / value:.1f} it/s at {mfu:.0%}" for mfu in args.mfu)
        print(f"\n{name} pass: {value / 1000:.1f} TFLOP per evaluation (UNet + ControlNet, CFG batch) → {rates}")


if __name__ == "__main__":
    main()
