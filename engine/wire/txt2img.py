"""A1111's txt2img request (and the fields img2img shares): every field A1111 v1.10 accepts, with its API defaults."""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.wire.validation import LenientInt, LenientPrompt, LenientStr, LenientStrList, parse_model


class GenerationRequest(BaseModel):
    """The fields txt2img and img2img share; names and defaults mirror A1111's generated API models
    (`StableDiffusionProcessing` and its subclasses).

    Every field is optional and `null` means "default", as in A1111. Defaults are the *API* ones,
    which differ from the web UI's: steps 50, sampler Euler (via `sampler_index`), denoising None.
    Unknown keys are kept (`model_extra`) so the response can list them as ignored.
    """

    model_config = ConfigDict(extra="allow")
    endpoint: ClassVar[str] = "generation"

    prompt: LenientPrompt | None = ""
    negative_prompt: LenientPrompt | None = ""
    styles: LenientStrList | None = None
    seed: LenientInt | None = -1
    subseed: LenientInt | None = -1
    subseed_strength: float | None = 0.0
    seed_resize_from_h: LenientInt | None = -1
    seed_resize_from_w: LenientInt | None = -1
    sampler_name: LenientStr | None = None
    scheduler: LenientStr | None = None
    batch_size: LenientInt | None = 1
    n_iter: LenientInt | None = 1
    steps: LenientInt | None = 50
    cfg_scale: float | None = 7.0
    width: LenientInt | None = 512
    height: LenientInt | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: LenientStr | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    comments: dict[str, Any] | None = None
    force_task_id: LenientStr | None = None
    sampler_index: LenientStr | None = "Euler"
    script_name: LenientStr | None = None
    script_args: list[Any] | None = []  # noqa: RUF012 - pydantic copies defaults per instance
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = {}  # noqa: RUF012
    infotext: LenientStr | None = None

    @classmethod
    def parse(cls, payload: Any):
        return parse_model(cls, payload, f"{cls.endpoint} payload")

    def ignored_fields(self) -> list[str]:
        """Top-level keys A1111 does not know; accepted and reported, never used."""
        return sorted(self.model_extra or {})

    def parameters(self) -> dict[str, Any]:
        """The request echoed with defaults filled, as A1111's response `parameters` (`vars(request)`)."""
        return self.model_dump(exclude=set(self.model_extra or {}))


class Txt2ImgRequest(GenerationRequest):
    """`/sdapi/v1/txt2img` (`StableDiffusionProcessingTxt2Img`): the shared fields plus hires fix."""

    endpoint: ClassVar[str] = "txt2img"

    firstpass_image: LenientStr | None = None
    enable_hr: bool | None = False
    firstphase_width: LenientInt | None = 0
    firstphase_height: LenientInt | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: LenientStr | None = None
    hr_second_pass_steps: LenientInt | None = 0
    hr_resize_x: LenientInt | None = 0
    hr_resize_y: LenientInt | None = 0
    hr_checkpoint_name: LenientStr | None = None
    hr_sampler_name: LenientStr | None = None
    hr_scheduler: LenientStr | None = None
    hr_prompt: LenientStr | None = ""
    hr_negative_prompt: LenientStr | None = ""
