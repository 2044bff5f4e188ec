"""A1111 requests → plans: the only code that speaks both A1111's and diffusers' vocabularies."""

from engine.translate.common import fixed_seed
from engine.translate.img2img import to_img2img_plan
from engine.translate.txt2img import to_plan


__all__ = ["fixed_seed", "to_img2img_plan", "to_plan"]
