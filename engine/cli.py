"""The local door: generate from a payload file, serve the A1111 HTTP API, list models, write demo models."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from engine.errors import EngineError
from engine.settings import Settings


logger = logging.getLogger("engine")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("--models", type=Path, help="models folder (default: $MODELS_DIR or ./models)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: auto)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate", help="run a payload file (RunPod envelope, txt2img or img2img, or a bare txt2img payload)"
    )
    generate.add_argument("payload", type=Path)
    generate.add_argument(
        "--out", type=Path, default=Path("outputs"), help="output folder (default: ./outputs)"
    )

    serve = commands.add_parser("serve", help="serve A1111's /sdapi/v1 HTTP API (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: 7860, A1111's)")
    serve.add_argument("--no-warm-up", action="store_true", help="load models on first use, not at start")

    commands.add_parser("models", help="list what the models folder holds")

    demo = commands.add_parser(
        "demo-models", help="write tiny RANDOM-WEIGHT models (they produce noise) for trying the worker out"
    )
    demo.add_argument("dest", type=Path, nargs="?", help="folder to write (default: the models folder)")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    overrides = {key: value for key, value in (("models_dir", args.models), ("device", args.device)) if value}
    settings = Settings.from_env(os.environ, **overrides)
    try:
        return COMMANDS[args.command](args, settings)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from engine import Engine
    from engine.imaging.png import png_bytes
    from engine.wire.envelope import IMG2IMG, TXT2IMG, parse_job_input

    call = parse_job_input(_read_input(args.payload))
    engine = Engine(settings)
    # The generation endpoints write their images; any other call prints its response body.
    generators = {TXT2IMG: engine.txt2img, IMG2IMG: engine.img2img}
    if call.endpoint.strip("/") not in generators:
        print(json.dumps(engine.handle(call.method, call.endpoint, call.payload), indent=2))  # noqa: T201
        return 0
    bars: dict[int, tqdm] = {}

    def on_progress(progress) -> None:
        # One bar per batch, opened on its first step so a rejected request prints no empty bar.
        bar = bars.get(progress.iteration)
        if bar is None:
            bar = bars[progress.iteration] = tqdm(
                total=progress.total,
                unit="step",
                desc=f"batch {progress.iteration + 1}/{progress.iterations}",
            )
        bar.update(progress.call + 1 - bar.n)

    try:
        result = generators[call.endpoint.strip("/")](call.payload, on_progress=on_progress)
    finally:
        for bar in bars.values():
            bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = json.loads(result.info)["job_timestamp"]
    for index, (image, text) in enumerate(zip(result.images, result.infotexts, strict=True)):
        path = args.out / f"{stamp}-{index:02d}.png"
        path.write_bytes(png_bytes(image, text))
        logger.info("wrote %s", path)
    info_path = args.out / f"{stamp}-info.json"
    info_path.write_text(json.dumps({**json.loads(result.info), "warnings": result.warnings}, indent=2))
    logger.info("wrote %s", info_path)
    return 0


def _read_input(path: Path):
    """A payload file holds the RunPod job (`{"input": …}`) or just its input."""
    data = json.loads(path.read_text())
    return data["input"] if isinstance(data, dict) and "input" in data else data


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from engine import Engine
    from engine.server import serve
    from engine.wire.routes import warm_up

    engine = Engine(settings)
    if not args.no_warm_up:
        # Like the RunPod worker: the default checkpoint and PRELOAD_ADETAILER detectors, then one tiny image.
        detectors = os.environ.get("PRELOAD_ADETAILER", "")
        warm_up(engine, ad_models=tuple(name.strip() for name in detectors.split(",") if name.strip()))
    serve(engine, host=args.host, port=args.port, log_level="debug" if args.verbose else "info")
    return 0


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    from engine.resources.catalog import ModelCatalog

    print(json.dumps(ModelCatalog(settings.models_dir).describe(), indent=2, default=str))  # noqa: T201
    return 0


def run_demo_models(args: argparse.Namespace, settings: Settings) -> int:
    from engine.demo.models import write_demo_models

    dest = args.dest or settings.models_dir
    for path in write_demo_models(dest):
        logger.info("wrote %s", path)
    logger.warning("these models have RANDOM weights: every image they make is noise")
    return 0


COMMANDS = {
    "generate": run_generate,
    "serve": run_serve,
    "models": run_models,
    "demo-models": run_demo_models,
}
