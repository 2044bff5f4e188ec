"""Engine vs a bare diffusers pipeline on the same txt2img work, measured side by side in one run.

    python bench/engine_vs_diffusers.py [--runs 3] [--steps 10] [--skip-full]

Cases: the tiny SD1.5 demo model at 64×64, and the full-size SD1.5 architecture (random weights, 860 M UNet
parameters) at 128×128. Both sides get the same components, the same sampler (DPM++ 2M Karras, which
diffusers' DPMSolverMultistepScheduler reproduces) and the same noise; runs alternate, medians are compared.
Also: `import engine.service` time vs `import diffusers` + the SD pipeline class, and checkpoint load time
(our loader: single file → pipeline on the device) vs a raw `safetensors.torch.load_file` of the same file.
"""

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from engine.demo.ldm_format import single_file_state_dict  # noqa: E402
from engine.demo.tiny import tiny_components, write_config_folder  # noqa: E402
from engine.generate import Models, generate  # noqa: E402
from engine.pipeline import A1111Pipeline  # noqa: E402
from engine.resources.loader import Precision, load_pipeline  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.translate import to_plan  # noqa: E402
from engine.wire.txt2img import Txt2ImgRequest  # noqa: E402


SEED = 42


def full_size_sd15_components() -> dict:
    """SD1.5's real architecture (diffusers configs of runwayml/stable-diffusion-v1-5) with random weights."""
    components = tiny_components("sd15")
    components["unet"] = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    components["vae"] = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    components["text_encoder"] = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            vocab_size=49408,
            bos_token_id=components["tokenizer"].bos_token_id,
            eos_token_id=components["tokenizer"].eos_token_id,
        )
    )
    for module in ("unet", "vae", "text_encoder"):
        components[module].eval()
    return components


def run_engine(components: dict, payload: dict) -> float:
    pipe = A1111Pipeline(
        **{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )
    plan = to_plan(Txt2ImgRequest.parse(payload), Settings())
    started = time.perf_counter()
    generate(plan, Models(pipe))
    return time.perf_counter() - started


def run_diffusers(components: dict, payload: dict) -> float:
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        components["scheduler"].config,
        use_karras_sigmas=True,
        timestep_spacing="linspace",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    pipe.set_progress_bar_config(disable=True)
    height, width = payload["height"], payload["width"]
    latents = torch.randn((1, 4, height // 8, width // 8), generator=torch.Generator().manual_seed(SEED))
    started = time.perf_counter()
    pipe(
        prompt=payload["prompt"],
        negative_prompt=payload["negative_prompt"],
        num_inference_steps=payload["steps"],
        guidance_scale=payload["cfg_scale"],
        height=height,
        width=width,
        latents=latents,
        output_type="pil",
    )
    return time.perf_counter() - started


def compare(name: str, components: dict, size: int, steps: int, runs: int) -> None:
    payload = {
        "prompt": "a watercolor painting of a fox",
        "negative_prompt": "blurry",
        "seed": SEED,
        "steps": steps,
        "cfg_scale": 7,
        "width": size,
        "height": size,
        "sampler_name": "DPM++ 2M",
        "scheduler": "karras",
    }
    run_engine(components, payload), run_diffusers(components, payload)  # warm-up
    engine_times, diffusers_times = [], []
    for _ in range(runs):
        engine_times.append(run_engine(components, payload))
        diffusers_times.append(run_diffusers(components, payload))
    engine_s, diffusers_s = statistics.median(engine_times), statistics.median(diffusers_times)
    print(
        f"| {name} | {size}×{size}, {steps} steps | {engine_s:.3f} | {diffusers_s:.3f} | {engine_s / diffusers_s:.3f} |"
    )


def import_times() -> None:
    def timed(code: str) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent
            )
            best = min(best, time.perf_counter() - started)
        return best

    ours = timed("import engine.service")
    theirs = timed("import diffusers; diffusers.StableDiffusionPipeline")
    light = timed("import engine, engine.wire.txt2img, engine.translate")
    print(
        f"| `import engine.service` | {ours:.2f} s | `import diffusers` + SD pipeline class | {theirs:.2f} s |"
    )
    print(f"| `import engine` + wire format + plan (no torch) | {light:.2f} s | | |")


def load_times(components: dict, label: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = root / "model.safetensors"
        state = single_file_state_dict("sd15", components)
        save_file(
            {k: v.detach().to(torch.float16).contiguous().clone() for k, v in state.items()}, checkpoint
        )
        write_config_folder(components, root / "configs" / "bench")
        raw = min(_timed(lambda: load_file(checkpoint)) for _ in range(2))
        ours = min(
            _timed(lambda: load_pipeline(checkpoint, [root / "configs"], Precision.for_device("cpu")))
            for _ in range(2)
        )
        size_gb = checkpoint.stat().st_size / 1e9
        print(f"| {label} ({size_gb:.2f} GB fp16) | {ours:.2f} s | {raw:.2f} s | {ours / raw:.1f}× |")


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-full", action="store_true", help="only the tiny model")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, python {platform.python_version()}\n"
    )
    print("| case | work | engine s | diffusers s | engine ÷ diffusers |\n|---|---|---|---|---|")
    tiny = tiny_components("sd15")
    compare("tiny SD1.5", tiny, 64, args.steps, args.runs)
    full = None if args.skip_full else full_size_sd15_components()
    if full is not None:
        compare("SD1.5 full-size, random weights", full, 128, args.steps, args.runs)
    print("\n| import | time | reference | time |\n|---|---|---|---|")
    import_times()
    print(
        "\n| checkpoint load | our loader (file → pipeline) | raw safetensors read | ratio |\n|---|---|---|---|"
    )
    load_times(tiny, "tiny SD1.5")
    if full is not None:
        load_times(full, "SD1.5 full-size")


if __name__ == "__main__":
    main()
