"""Peak memory of the seed-002 hires path at full-size shapes: VAE decode of 1536×2048 untiled vs tiled, and
one UNet / ControlNet step at the hires latent (issue 4 item 7).

    python bench/hires_memory.py [--threads 2] [--skip-real]

Models are the real SDXL architectures (diffusers configs, performance.md §1.2) with no weights: built on the
meta device, where every op computes shapes only. A dispatch-mode tracker follows the bytes of live tensors
(each storage counted once, released when its last tensor dies) and reports the activation peak above the
weights and inputs, like an allocator's peak minus its cache. Scaled dot-product attention is replaced by a
stub returning its output shape, which is what the flash / memory-efficient kernels allocate (PyTorch's CPU
SDPA is a flash kernel too); without it the VAE's mid-block attention at 1536×2048 would count a
49 152² score matrix.

The tracker is checked against reality on the real CPU: in a fresh subprocess per case, the real SDXL VAE
(random weights, `AutoencoderKL(**config)`, fp32) decodes 256×192 and 512×384 untiled and 512×384 in
256-px tiles, and the rise of `ru_maxrss` above the RSS before the decode is compared with the tracker's
peak for the same case. Full-size real decodes are not run: 1536×2048 costs ≈ 35 TFLOP (≈ 10+ minutes on
this CPU) and ≈ 9 GiB in fp32. Whole run: ≈ 2–5 minutes on a busy 2-core machine.

Tiling is `engine.imaging.vae_tiling` (the engine's tiled decode; tile 1024 px / overlap 256 by default).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from engine.demo.architectures import VAE_OVERRIDES  # noqa: E402
from engine.demo.full_size import UNET_CONFIGS, VAE_CONFIG, VAE_SAMPLE_SIZE  # noqa: E402
from engine.imaging.vae_tiling import VaeTiling, decode  # noqa: E402


GIB = 1 << 30
MIB = 1 << 20
HIRES_WIDTH, HIRES_HEIGHT = 1536, 2048  # seed 002: 960×1280 × hr_scale 1.6
# The released SDXL architectures, as the full-size random checkpoints use them.
SDXL_VAE = {**VAE_CONFIG, **VAE_OVERRIDES["sdxl"], "sample_size": VAE_SAMPLE_SIZE["sdxl"]}
SDXL_UNET = UNET_CONFIGS["sdxl"]
# IdentityNet is a full-size SDXL ControlNet: the UNet's encoder half with the same blocks.
SDXL_CONTROLNET = {key: value for key, value in SDXL_UNET.items() if key not in ("up_block_types", "sample_size")}
# Real-CPU validation cases: (width, height, tile size or None).
REAL_CASES = ((256, 192, None), (512, 384, None), (512, 384, 256))


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"python {platform.python_version()}, load average {load}"
    )


class LiveBytes(TorchDispatchMode):
    """Bytes of tensors created under the mode that are still alive; `peak` is the high-water mark."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Release first: a storage freed during this op may share its address with an output's.
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        # Views (of weights, inputs or activations) share an input's storage: not an allocation.
        inputs = {StorageWeakRef(tensor.untyped_storage()).cdata
                  for tensor in tree_flatten((args, kwargs))[0] if isinstance(tensor, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live and ref.cdata not in inputs:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@contextmanager
def output_only_attention():
    """SDPA as flash / memory-efficient kernels allocate: just the output (B, heads, L, value dim)."""
    original = F.scaled_dot_product_attention

    def stub(query, key, value, *args, **kwargs):
        return query.new_empty((*query.shape[:-1], value.shape[-1]))

    F.scaled_dot_product_attention = stub
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def parameter_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(parameter.numel() for parameter in module.parameters()) * torch.tensor([], dtype=dtype).element_size()


def vae_peak(width: int, height: int, dtype: torch.dtype, tile: int | None, device: str = "meta") -> int:
    """Tracked activation peak of one VAE decode of a width×height image (batch 1)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL(**SDXL_VAE).to(dtype).eval()
        latents = torch.zeros(1, 4, height // 8, width // 8, dtype=dtype)
    tiling = VaeTiling(above_pixels=0, tile_size=tile, overlap=tile // 4) if tile else VaeTiling(above_pixels=None)
    tracker = LiveBytes()
    with torch.no_grad(), output_only_attention(), tracker:
        decode(vae, latents, tiling)
    return tracker.peak


def denoiser_peaks(width: int, height: int, dtype: torch.dtype) -> dict[str, tuple[int, int]]:
    """Tracked activation peak and weight bytes of one UNet and one ControlNet forward, CFG batch 2."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        models = {
            "SDXL UNet": UNet2DConditionModel(**SDXL_UNET).to(dtype).eval(),
            "SDXL ControlNet (IdentityNet size)": ControlNetModel(**SDXL_CONTROLNET).to(dtype).eval(),
        }
        latents = torch.zeros(2, 4, height // 8, width // 8, dtype=dtype)
        context = torch.zeros(2, 77, 2048, dtype=dtype)
        added = {"text_embeds": torch.zeros(2, 1280, dtype=dtype), "time_ids": torch.zeros(2, 6, dtype=dtype)}
        hint = torch.zeros(2, 3, height, width, dtype=dtype)
    unet, controlnet = models.values()
    inputs = {"encoder_hidden_states": context, "added_cond_kwargs": added, "return_dict": False}
    peaks = {}
    for name, model in models.items():
        extra = {"controlnet_cond": hint} if model is controlnet else {}
        tracker = LiveBytes()
        with torch.no_grad(), output_only_attention(), tracker:
            model(latents, 500, **inputs, **extra)
        peaks[name] = (tracker.peak, parameter_bytes(model, dtype))
    # One hires step with InstantID: the ControlNet's residuals stay alive while the UNet runs.
    tracker = LiveBytes()
    with torch.no_grad(), output_only_attention(), tracker:
        down, mid = controlnet(latents, 500, controlnet_cond=hint, **inputs)
        unet(latents, 500, down_block_additional_residuals=down, mid_block_additional_residual=mid, **inputs)
    peaks["ControlNet then UNet (one InstantID step)"] = (
        tracker.peak, parameter_bytes(unet, dtype) + parameter_bytes(controlnet, dtype)
    )
    return peaks


def real_decode_child(width: int, height: int, tile: int | None, threads: int) -> dict:
    """In a fresh process: the RSS rise of one real fp32 decode on the CPU (no tracker)."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SDXL_VAE).eval()
    tiling = VaeTiling(above_pixels=0, tile_size=tile, overlap=tile // 4) if tile else VaeTiling(above_pixels=None)
    with torch.no_grad():
        decode(vae, torch.randn(1, 4, 8, 8), VaeTiling(above_pixels=None))  # first-call allocations
        latents = torch.randn(1, 4, height // 8, width // 8)
        before = _current_rss()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        decode(vae, latents, tiling)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rise": peak_after - before, "clean": peak_after > peak_before}


def _current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_real_case(width: int, height: int, tile: int | None, threads: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import hires_memory as m; print(json.dumps(m.real_decode_child({width}, {height}, {tile}, {threads})))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def validation_table(threads: int) -> None:
    print("\n| real CPU check, fp32 VAE decode | ru_maxrss rise | tracker (meta) | tracker ÷ RSS |\n|---|---|---|---|")
    whole = []
    for width, height, tile in REAL_CASES:
        real = run_real_case(width, height, tile, threads)
        tracked = vae_peak(width, height, torch.float32, tile)
        label = f"{width}×{height}" + (f", {tile}-px tiles" if tile else ", whole")
        note = "" if real["clean"] else " (peak not above earlier peak)"
        print(f"| {label} | {real['rise'] / MIB:.0f} MiB{note} | {tracked / MIB:.0f} MiB | "
              f"{tracked / real['rise']:.2f} |")
        if tile is None:
            whole.append((width * height, real["rise"], tracked))
    (small_px, small_rss, small_tracked), (large_px, large_rss, large_tracked) = whole[0], whole[-1]
    # Activations grow linearly with pixels: a line through the two whole decodes predicts the full size.
    slope = (large_rss - small_rss) / (large_px - small_px)
    full_px = HIRES_WIDTH * HIRES_HEIGHT
    predicted = small_rss + slope * (full_px - small_px)
    tracked_slope = (large_tracked - small_tracked) / (large_px - small_px)
    print(f"| {HIRES_WIDTH}×{HIRES_HEIGHT}, whole: line through the two whole decodes | "
          f"{predicted / GIB:.2f} GiB (predicted) | {vae_peak(HIRES_WIDTH, HIRES_HEIGHT, torch.float32, None) / GIB:.2f}"
          f" GiB | RSS ÷ tracker per extra pixel {slope / tracked_slope:.2f} |")


def vae_table() -> None:
    print(f"\n| VAE decode {HIRES_WIDTH}×{HIRES_HEIGHT} (SDXL VAE, batch 1) | fp32 (force_upcast, CPU) | fp16 |")
    print("|---|---|---|")
    for label, tile in (("whole image", None), ("tiles 1024 px, overlap 256 (engine default)", 1024),
                        ("tiles 512 px, overlap 128", 512)):
        fp32 = vae_peak(HIRES_WIDTH, HIRES_HEIGHT, torch.float32, tile)
        fp16 = vae_peak(HIRES_WIDTH, HIRES_HEIGHT, torch.float16, tile)
        print(f"| {label} | {fp32 / GIB:.2f} GiB | {fp16 / GIB:.2f} GiB |")


def denoiser_table() -> None:
    latent = f"{HIRES_WIDTH // 8}×{HIRES_HEIGHT // 8}"
    print(f"\n| one forward at the hires latent {latent} (batch 2, fp16) | activation peak | weights |\n|---|---|---|")
    for name, (peak, weights) in denoiser_peaks(HIRES_WIDTH, HIRES_HEIGHT, torch.float16).items():
        print(f"| {name} | {peak / GIB:.2f} GiB | {weights / GIB:.2f} GiB |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the real decodes")
    parser.add_argument("--skip-real", action="store_true", help="only the meta-device tracker")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    if not args.skip_real:
        validation_table(args.threads)
    vae_table()
    denoiser_table()
    print(f"\nload average after: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
