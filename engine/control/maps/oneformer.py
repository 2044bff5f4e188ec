"""OneFormer semantic segmentation as sd-webui-controlnet v1.1.455 runs it (`annotator/oneformer/api.py`
`semantic_run`, `oneformer/demo/defaults.py` `DefaultPredictor`, `oneformer/oneformer_model.py`;
SHI-Labs/OneFormer, MIT), with transformers' `OneFormerForUniversalSegmentation` doing the network work.

sd-webui-controlnet runs the detectron2 checkpoints `250_16_swin_l_oneformer_ade20k_160k.pth` and
`150_16_swin_l_oneformer_coco_100ep.pth`; SHI-Labs publish the same models converted to transformers
(`shi-labs/oneformer_ade20k_swin_large`, whose repository also holds the .pth, and
`shi-labs/oneformer_coco_swin_large`). The predictor, step by step:

1. the RGB image's short side to the dataset's test size (ADE20K 640, at most 2560 long; COCO 800, at most 1333:
   `INPUT.MIN_SIZE_TEST` / `MAX_SIZE_TEST`), PIL bilinear on uint8 (detectron2 `ResizeShortestEdge`);
2. (pixels − mean) / std in 0–255 units, zero-padded at the bottom and right to a multiple of 32;
3. the task token: "The task is semantic", lower-cased by CLIP's tokenizer, as 77 ids, zero after the end token;
4. the query masks' logits bilinearly up to the padded size, cropped to the resized image, bilinearly to the
   input's size; then sigmoid, and the class scores softmax(class logits)[:, :-1] summed over the queries
   (`semantic_inference`, after `sem_seg_postprocess` since panoptic inference is on); argmax is the label.

transformers' own `post_process_semantic_segmentation` sums at the mask resolution and resizes the sums; the
order above is the original's, so labels can differ from it along region borders.

Nothing is read from the Hub: `OneFormerImageProcessor`, which may fetch class metadata from
`shi-labs/oneformer_demo`, is never built; pixels and task ids are made here, the tokenizer and model come from
the local folder.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.control.maps import segment_palettes
from engine.control.maps.semantic_drawing import draw_semantic


PIXEL_MEAN = (123.675, 116.280, 103.530)  # `MODEL.PIXEL_MEAN` / `PIXEL_STD`, RGB, 0–255
PIXEL_STD = (58.395, 57.120, 57.375)
SIZE_DIVISIBILITY = 32  # `MODEL.ONE_FORMER.SIZE_DIVISIBILITY`
TASK = "the task is semantic"  # `DefaultPredictor`: f"The task is {task}"; the tokenizer lower-cases it


@dataclass(frozen=True)
class Dataset:
    """What differs between the two models: the test resize and the class colours."""

    min_size: int  # `INPUT.MIN_SIZE_TEST`
    max_size: int  # `INPUT.MAX_SIZE_TEST`
    palette: tuple[tuple[int, int, int], ...]


DATASETS = {
    "ade20k": Dataset(640, 2560, segment_palettes.ADE20K_COLOURS),
    "coco": Dataset(800, 1333, segment_palettes.COCO_PANOPTIC_COLOURS),  # detectron2's defaults
}


def resized_shape(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2 `ResizeShortestEdge.get_output_shape`: short side to `short`, the long side at most `longest`,
    each rounded half up."""
    scale = short / min(height, width)
    new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
    if max(new_height, new_width) > longest:
        shrink = longest / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def network_input(image: np.ndarray, dataset: Dataset) -> tuple[torch.Tensor, tuple[int, int]]:
    """Steps 1–2: NCHW float32 pixels padded to a multiple of 32, and the resized image's (height, width)."""
    size = resized_shape(*image.shape[:2], dataset.min_size, dataset.max_size)
    resized = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR), dtype=np.float32)
    # In float32, as the original normalises its float32 tensor.
    pixels = (resized - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    padded = np.zeros((-(-size[0] // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
                       -(-size[1] // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY, 3), np.float32)
    padded[:size[0], :size[1]] = pixels
    return torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()), size


def task_inputs(tokenizer, length: int) -> torch.Tensor:
    """Step 3, as transformers' `OneFormerProcessor._preprocess_text`: ids padded to `length`, padding zeroed."""
    tokens = tokenizer([TASK], padding="max_length", max_length=length, truncation=True)
    return torch.tensor(tokens["input_ids"]) * torch.tensor(tokens["attention_mask"])


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                    resized: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Step 4 for one image: (classes, height, width) scores at `size` from (queries, classes + 1) class logits
    and (queries, h, w) mask logits of the `padded` input whose unpadded part is `resized`."""
    masks = torch.nn.functional.interpolate(mask_logits[None], padded, mode="bilinear", align_corners=False)
    masks = masks[:, :, :resized[0], :resized[1]]
    masks = torch.nn.functional.interpolate(masks, size, mode="bilinear", align_corners=False)[0]
    classes = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", classes, masks.sigmoid())


class OneFormerSegmenter:
    """`OneformerDetector.__call__`: an RGB image (HWC uint8) in, the coloured semantic map of its size out."""

    def __init__(self, model, tokenizer, dataset: Dataset):
        self.model = model
        self.dataset = dataset
        self.task = task_inputs(tokenizer, model.config.task_seq_len)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def labels(self, image: np.ndarray) -> np.ndarray:
        """The class of every pixel (HW int64)."""
        parameter = next(self.model.parameters())
        pixels, resized = network_input(image, self.dataset)
        outputs = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype),
                             task_inputs=self.task.to(parameter.device))
        scores = semantic_scores(outputs.class_queries_logits[0].float(), outputs.masks_queries_logits[0].float(),
                                 tuple(pixels.shape[-2:]), resized, image.shape[:2])
        return scores.argmax(dim=0).cpu().numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return draw_semantic(self.labels(image), self.dataset.palette)


def load_oneformer(folder: Path, dataset: str) -> OneFormerSegmenter:
    """A transformers-format OneFormer folder (config.json, the weights, CLIP tokenizer files), read offline."""
    from transformers import CLIPTokenizer, OneFormerForUniversalSegmentation

    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    model = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return OneFormerSegmenter(model.eval(), tokenizer, DATASETS[dataset])
