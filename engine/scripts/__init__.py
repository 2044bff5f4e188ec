"""A1111's selectable scripts (`script_name` + `script_args`): each a small module that turns one request into
the generations A1111's script would run, through the engine's ordinary generation call, and joins their
images as the script's `Processed` does.

Scripts work on A1111 requests, as A1111's work on its `p`: like the translate layer, they speak A1111's
field names. Only `ScriptContext.generate` touches models.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.scripts.results import combine
from engine.settings import Settings
from engine.wire.scripts import ScriptSpec


@dataclass(frozen=True)
class ScriptContext:
    """What a script may use: the request (its `script_args` included), the generation call, the upscalers.

    Attributes:
        request: the parsed `Txt2ImgRequest` / `Img2ImgRequest`.
        img2img: which tab the script runs in.
        generate: `(request, on_progress, seeds=None) → GenerationResult` for one plain generation.
        upscalers: `engine.upscale.registry.Upscalers` (SD upscale).
        on_progress: the caller's progress callback, passed to every generation.
        check: `(request) → None`: translates a request and resolves its model names without generating, so
            a script can refuse a bad combination before any work.
        settings: the worker's limits (`max_script_generations`, input images, pixels).
    """

    request: Any
    img2img: bool
    generate: Callable[..., Any]
    upscalers: Any = None
    on_progress: Callable[[Any], None] | None = None
    check: Callable[[Any], None] | None = None
    settings: Settings = field(default_factory=Settings)
    done: list = field(default_factory=list)  # every generation's result so far, in order


    def variant(self, **changes: Any):
        """The request with `changes`, without its script (a script's generations are plain ones)."""
        return self.request.model_copy(update={"script_name": None, "script_args": [], **changes})

    def run(self, request, seeds: list[int] | None = None):
        """One generation. Raises `ScriptStopped` when an interrupt or the job timeout stopped it: A1111's
        scripts end with `state.interrupted` too (a skip ends only that generation's batch)."""
        result = self.generate(request, self.on_progress, seeds=seeds)
        self.done.append(result)
        if result.interrupted or len(result.images) < planned_images(request):
            raise ScriptStopped()
        return result

    def validate(self, requests) -> None:
        if self.check is not None:
            for request in requests:
                self.check(request)


class ScriptStopped(Exception):  # noqa: N818 - a signal, not an error
    """A script's generation was stopped (interrupt, skip, job timeout): the script ends there."""


def planned_images(request) -> int:
    """How many images a plain generation of `request` makes (img2img: one per init image when several)."""
    init_images = getattr(request, "init_images", None) or []
    batch = len(init_images) if len(init_images) > 1 else max(1, request.batch_size or 1)
    return batch * max(1, request.n_iter or 1)


def run_script(spec: ScriptSpec, context: ScriptContext):
    """Run the selectable script `spec` for `context.request`; returns the combined `GenerationResult`.

    When one of its generations is stopped (interrupt, timeout), the script ends and the response holds the
    images made so far, ungridded, with a warning, as a stopped plain request keeps its images.
    """
    from engine.scripts import loopback, outpainting, prompt_matrix, prompts_from_file, sd_upscale, xyz_plot

    runners: dict[str, Callable[[ScriptSpec, ScriptContext], Any]] = {
        "x/y/z plot": xyz_plot.run,
        "prompt matrix": prompt_matrix.run,
        "prompts from file or textbox": prompts_from_file.run,
        "sd upscale": sd_upscale.run,
        "loopback": loopback.run,
        "outpainting mk2": outpainting.run_mk2,
        "poor man's outpainting": outpainting.run_poor_mans,
    }
    try:
        return runners[spec.name](spec, context)
    except ScriptStopped:
        results = context.done
        images = [image for result in results for image in result.images]
        infotexts = [text for result in results for text in result.infotexts]
        stopped = combine(results, images, infotexts)
        stopped.warnings = [f"{spec.title} stopped after {len(results)} of its generations (interrupted or "
                            "timed out): the images made so far, without the script's grid", *stopped.warnings]
        return stopped


__all__ = ["ScriptContext", "run_script"]
