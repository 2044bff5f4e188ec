"""The face restoration step of the recipe: each decoded image's faces restored before anything else sees it
(A1111 `process_images_inner`: after decode, before the scripts' `postprocess_image` and the inpaint overlay)."""

from PIL import Image

from engine.plan import FaceRestorationPlan


def restore_decoded(
    images: list[Image.Image], restorer, plan: FaceRestorationPlan | None, seeds, first_index: int, output
) -> list[Image.Image]:
    """Every image with its faces restored (`plan` None: the images as they are).

    Args:
        restorer: the loaded `engine.restore.registry.FaceRestorer` named by `plan`.
        seeds: one per image; GFPGAN's noise is drawn from the image's seed.
        first_index: the position of `images[0]` in the request, for notes.
        output: the `GenerationOutput` counting restorer calls and collecting notes.
    """
    if plan is None:
        return images
    restored = []
    for offset, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        result = restorer.restore_faces(image, plan.weight, int(seed))
        output.restorer_calls += len(result.faces)
        if not result.faces:
            output.notes.append(
                f"face restoration: no face found in image {first_index + offset + 1}; image left unchanged"
            )
        restored.append(result.image)
    return restored
