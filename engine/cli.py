"""The local door: generate from a payload file, serve the A1111 HTTP API, list models, write demo models."""

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from engine.errors import EngineError, RequestError, internal_error_message, new_request_id
from engine.logs import setup_logging
from engine.settings import Settings
from engine.startup import imports_without_collection


logger = logging.getLogger("engine")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("--models", type=Path, help="models folder (default: $MODELS_DIR or ./models)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: auto)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate",
        help="run a payload file (RunPod job or envelope, bare txt2img payload, or a doc with a ```json block)",
    )
    generate.add_argument("payload", type=Path)
    generate.add_argument(
        "--out", type=Path, default=Path("outputs"), help="output folder (default: ./outputs)"
    )
    generate.add_argument(
        "--image",
        type=Path,
        help="use this image file wherever the payload has a placeholder instead of a base64 image",
    )
    generate.add_argument(
        "--checkpoint", help="run on this checkpoint instead of the one the payload names (sd_model_checkpoint)"
    )

    serve = commands.add_parser("serve", help="serve A1111's /sdapi/v1 HTTP API (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: 7860, A1111's)")
    serve.add_argument("--no-warm-up", action="store_true", help="load models on first use, not at start")

    save = commands.add_parser(
        "save-images", help="write the images of a saved response (A1111 body or RunPod output) to files"
    )
    save.add_argument("response", type=Path)
    save.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: ./outputs)")

    commands.add_parser("models", help="list what the models folder holds")

    demo = commands.add_parser(
        "demo-models", help="write tiny RANDOM-WEIGHT models (they produce noise) for trying the worker out"
    )
    demo.add_argument("dest", type=Path, nargs="?", help="folder to write (default: the models folder)")
    demo.add_argument("--annotators", choices=("small", "all"), default="small",
                      help="'all' also writes the large random-weight annotators (OpenPose, MiDaS…: ~1.5 GB)")

    args = parser.parse_args(argv)
    setup_logging(args.verbose, fmt="%(levelname)s %(name)s: %(message)s")
    overrides = {key: value for key, value in (("models_dir", args.models), ("device", args.device)) if value}
    settings = Settings.from_env(os.environ, **overrides)
    try:
        return COMMANDS[args.command](args, settings)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    except Exception:
        # As the other doors: the traceback goes to the log (stderr here), under an id the last line repeats.
        request_id = new_request_id()
        logger.exception("request %s failed", request_id)
        print(f"error: {internal_error_message(request_id)}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 1


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    with imports_without_collection():
        from engine import Engine
        from engine.payload_files import fill_placeholder_images, read_job_input, use_checkpoint
        from engine.wire.envelope import parse_job_input

    job_input = read_job_input(args.payload)
    if args.checkpoint:
        job_input = use_checkpoint(job_input, args.checkpoint)
    if args.image:
        job_input, replaced = fill_placeholder_images(job_input, args.image)
        logger.info("used %s for %d placeholder image(s)", args.image, replaced)
    call = parse_job_input(job_input)
    engine = Engine(settings)
    generation = GENERATIONS.get(call.endpoint)
    if generation is None:
        print(json.dumps(engine.handle(call.method, call.endpoint, call.payload), indent=2))  # noqa: T201
        return 0
    with _progress_bars() as on_progress:
        result = getattr(engine, generation)(call.payload, on_progress=on_progress)
    stamp = json.loads(result.info)["job_timestamp"]
    _write_images(args.out, stamp, result.images, result.infotexts)
    info_path = args.out / f"{stamp}-info.json"
    info_path.write_text(json.dumps({**json.loads(result.info), "warnings": result.warnings}, indent=2))
    logger.info("wrote %s", info_path)
    return 0


# Endpoints `generate` runs with images written to files (others print their JSON body).
GENERATIONS = {"sdapi/v1/txt2img": "txt2img", "sdapi/v1/img2img": "img2img"}


@contextlib.contextmanager
def _progress_bars():
    """Yields an `on_progress` that draws one tqdm bar per batch, opened on its first step (a rejected request
    prints no empty bar); log lines (a checkpoint loading, a hash computed) print above the bars."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bars: dict[int, tqdm] = {}

    def on_progress(progress) -> None:
        bar = bars.get(progress.iteration)
        if bar is None:
            description = f"batch {progress.iteration + 1}/{progress.iterations}"
            bar = bars[progress.iteration] = tqdm(total=progress.total, unit="step", desc=description)
        bar.update(progress.call + 1 - bar.n)

    try:
        with logging_redirect_tqdm():
            yield on_progress
    finally:
        for bar in bars.values():
            bar.close()


def _write_images(folder: Path, stem: str, images, infotexts) -> None:
    from engine.imaging.png import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, text) in enumerate(zip(images, infotexts, strict=True)):
        path = folder / f"{stem}-{index:02d}.png"
        path.write_bytes(png_bytes(image, text))
        logger.info("wrote %s", path)


def run_save_images(args: argparse.Namespace, settings: Settings) -> int:
    """Write the images of a saved response (A1111 body, RunPod `{"output": …}`, or a RunPod status)."""
    import base64

    body = json.loads(args.response.read_text())
    while isinstance(body, dict) and isinstance(body.get("output"), dict):
        body = body["output"]
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        if isinstance(body, dict) and body.get("error"):
            raise RequestError(str(args.response), f"holds an error, not images: {body['error']}")
        raise RequestError(str(args.response), 'has no "images" list')
    args.out.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(images):
        path = args.out / f"{args.response.stem}-{index:02d}.png"
        path.write_bytes(base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text))
        logger.info("wrote %s", path)
    return 0


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    with imports_without_collection():
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
    written = write_demo_models(dest)
    if args.annotators == "all":
        from engine.control.maps.demo import LARGE, write_random_annotators

        written += write_random_annotators(dest, tuple(LARGE))
    for path in written:
        logger.info("wrote %s", path)
    logger.warning("these models have RANDOM weights: every image they make is noise")
    return 0


COMMANDS = {
    "generate": run_generate,
    "save-images": run_save_images,
    "serve": run_serve,
    "models": run_models,
    "demo-models": run_demo_models,
}
