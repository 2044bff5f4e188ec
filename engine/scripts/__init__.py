"""A1111's selectable scripts (`script_name` + `script_args`): each a small module that turns one request into
the generations A1111's script would run, through the engine's ordinary generation call, and joins their
images as the script's `Processed` does.

Scripts work on A1111 requests, as A1111's work on its `p`: like the translate layer, they speak A1111's
field names. Only `ScriptContext.generate` touches models.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    """

    request: Any
    img2img: bool
    generate: Callable[..., Any]
    upscalers: Any = None
    on_progress: Callable[[Any], None] | None = None
    check: Callable[[Any], None] | None = None

    def variant(self, **changes: Any):
        """The request with `changes`, without its script (a script's generations are plain ones)."""
        return self.request.model_copy(update={"script_name": None, "script_args": [], **changes})

    def run(self, request, seeds: list[int] | None = None):
        return self.generate(request, self.on_progress, seeds=seeds)

    def validate(self, requests) -> None:
        if self.check is not None:
            for request in requests:
                self.check(request)


def run_script(spec: ScriptSpec, context: ScriptContext):
    """Run the selectable script `spec` for `context.request`; returns the combined `GenerationResult`."""
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
    return runners[spec.name](spec, context)


__all__ = ["ScriptContext", "run_script"]
