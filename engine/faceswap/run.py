"""ReActor's face swap on each finished image: find the faces, swap the chosen pairs, then restore faces and
upscale as ReActor's enhancement options say.

ReActor (Gourieff/sd-webui-reactor `scripts/reactor_faceswap.py` `postprocess_image`, `reactor_swapper.py`
`swap_face` / `operate` / `enhance_image`, AGPL-3.0) runs in A1111's `postprocess_image` hook: after the
image is decoded and its faces restored (`restore_faces`), after ADetailer (A1111 runs the always-on scripts
in extension folder order, `adetailer` before `sd-webui-reactor`).
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.faceswap.args import ReactorArgs, field
from engine.faceswap.selection import FacePair, check_index_counts, pair_faces, source_faces_for


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceSwapStage:
    """Everything one request's swap needs, loaded and checked before generation.

    Attributes:
        sources: the source face per source index (None: it failed the source gender filter).
        restorer: an `engine.restore.registry.FaceRestorer`, or None.
        upscaler: an `engine.upscale.pixel.PixelUpscaler`, or None.
        mask_parser: face mask correction's BiSeNet, when `args.mask_face`.
    """

    args: ReactorArgs
    analyser: Any
    swapper: Any
    sources: tuple
    restorer: Any = None
    upscaler: Any = None
    mask_parser: Any = None

    def apply(self, image: Image.Image, seed: int) -> tuple[Image.Image, list[FacePair], list[str]]:
        """One image with its faces swapped and enhanced. Returns (image, the swaps made, notes)."""
        from engine.faceswap.face_mask import FaceMask

        args = self.args
        original = image.convert("RGB")
        bgr = np.ascontiguousarray(np.asarray(original)[:, :, ::-1])
        faces = self.analyser.faces(bgr, args.det_thresh, args.det_maxnum)
        pairs, notes = pair_faces(self.sources, faces, args.faces_index, args.gender_target)
        face_mask = FaceMask(self.mask_parser, bgr.shape) if args.mask_face else None
        result = image
        if pairs:
            result = Image.fromarray(np.ascontiguousarray(self.swapper.swap(bgr, pairs, face_mask)[:, :, ::-1]))
        # ReActor enhances only a swapped image, unless told to upscale anyway (`upscale_force`).
        if face_mask is not None and (pairs or args.upscale_force):
            result = self._enhance_through_mask(result, original, face_mask.mask, seed)
        elif pairs or args.upscale_force:
            steps = (self._restore, self._upscale) if args.restore_first else (self._upscale, self._restore)
            for step in steps:
                result = step(result, seed)
        return result, pairs, notes

    def _enhance_through_mask(self, image: Image.Image, original: Image.Image, mask: Image.Image,
                              seed: int) -> Image.Image:
        """ReActor `enhance_image_and_mask`: the image goes back over the original through the faces' masks
        after restoring (restore first), or after upscaling and before restoring (then only at scale 1, which
        `parse_reactor_args` checks: ReActor fails on a larger image)."""
        if self.args.restore_first:
            return self._upscale(Image.composite(self._restore(image, seed), original, mask), seed)
        return self._restore(Image.composite(self._upscale(image, seed), original, mask), seed)

    def _restore(self, image: Image.Image, seed: int) -> Image.Image:
        """ReActor `restore_face`: the whole image restored, then blended with it by the visibility."""
        if self.restorer is None:
            return image
        restored = self.restorer.restore(image, self.args.codeformer_weight, seed)
        return Image.blend(image, restored, self.args.restorer_visibility)

    def _upscale(self, image: Image.Image, seed: int) -> Image.Image:
        """ReActor `upscale_image`: A1111's upscale by the scale; at scale 1 blended by the visibility."""
        if self.upscaler is None:
            return image
        upscaled = self.upscaler.upscale(image, self.args.upscaler_scale)
        if self.args.upscaler_scale == 1 and upscaled.size == image.size:
            upscaled = Image.blend(image, upscaled, self.args.upscaler_visibility)
        return upscaled


def prepare_stage(args: ReactorArgs, engine) -> FaceSwapStage:
    """Resolve and load what `args` name and analyse the source face, so that any error (a missing model, a
    source image without the asked face) comes before generation.

    Args:
        engine: the `Engine` (its `face_swap` models, `restorers`, `upscalers`).

    Raises:
        RequestError / NotFoundError: naming the ReActor arg at fault.
    """
    from engine.faceswap.swapper import load_face_model
    from engine.imaging.decode import decode_image

    files = engine.face_swap.resolve(args)
    restorer = engine.restorers.get(args.face_restorer, field("face_restorer")) if args.face_restorer else None
    upscaler = engine.upscalers.pixel(args.upscaler, field("upscaler")) if args.upscaler else None
    analyser = engine.face_swap.analyser(files)
    swapper = engine.face_swap.swapper(files)
    if files.face_model is not None:
        # A face model holds one face: ReActor uses it whatever the source indices say, without gender check.
        sources: tuple = (load_face_model(files.face_model),)
    else:
        check_index_counts(args.source_faces_index, args.faces_index, field("source_faces_index"))
        image, _ = decode_image(args.source_image, field("source_image"), engine.settings.limits_for_images("reactor"))
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        faces = analyser.faces(bgr, args.det_thresh, args.det_maxnum)
        sources = tuple(source_faces_for(faces, args.source_faces_index, args.gender_source,
                                         field("source_faces_index"), field("source_image")))
    mask_parser = engine.face_swap.mask_parser() if args.mask_face else None
    return FaceSwapStage(args, analyser, swapper, sources, restorer, upscaler, mask_parser)


def swap_faces(stage: FaceSwapStage | None, images: list[Image.Image], seeds, first_index: int, output):
    """`images` with ReActor applied (`stage` None: as they are); notes go to `output.notes`."""
    if stage is None:
        return images
    swapped = []
    for offset, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        result, pairs, notes = stage.apply(image, int(seed))
        output.notes += [f"ReActor, image {first_index + offset + 1}: {note}" for note in notes]
        logger.info("ReActor: %d face(s) swapped in image %d", len(pairs), first_index + offset + 1)
        swapped.append(result)
    return swapped
