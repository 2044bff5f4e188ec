"""seg_anime_face through the worker on the demo models' random-weight `UNet.pth`.

No maintained library ships this network, so there is no third-party output to compare with: these tests check
what sd-webui-controlnet's code fixes — the checkpoint's layout (torchvision's MobileNetV2 blocks under
`en_block*`, a DataParallel `module.` prefix accepted), the seven-colour palette, and the scale rule (the network
works at short side 512; the map is cut to the padded image's unpadded size).
"""

import base64
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.api import detect
from engine.control.maps.anime_face import PALETTE, AnimeFaceUNet, load_anime_face
from engine.control.maps.annotators import AnnotatorStore


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image(height=64, width=64) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 255, (height, width, 3)).astype(np.uint8)


def _through_the_worker(root, image, resolution) -> np.ndarray:
    body = detect(types.SimpleNamespace(root=root), {"controlnet_module": "seg_anime_face",
                                                     "controlnet_input_images": [_b64(image)],
                                                     "controlnet_processor_res": resolution})
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))


def test_the_checkpoint_layout_is_the_published_one():
    from torchvision.models import mobilenet_v2

    weights = AnimeFaceUNet().state_dict()
    features = mobilenet_v2(weights=None).features.state_dict()
    # en_block3 holds MobileNetV2's feature blocks 7 … 13: its first is block 7.
    assert weights["en_block3.0.conv.0.0.weight"].shape == features["7.conv.0.0.weight"].shape
    assert weights["de_block0.1.weight"].shape == (7, 32, 3, 3)
    assert not any(key.startswith("features") for key in weights)
    wrapped = {f"module.{key}": value for key, value in weights.items()}  # a DataParallel checkpoint
    network = load_anime_face(wrapped)
    assert torch.equal(network.state_dict()["de_block4.1.weight"], weights["de_block4.1.weight"])


@pytest.mark.parametrize(("resolution", "expected_shape"), [(512, (512, 512, 3)), (64, (64, 64, 3))])
def test_the_map_is_painted_at_the_networks_scale(demo_models, resolution, expected_shape):
    image = _image()
    got = _through_the_worker(demo_models, image, resolution)
    assert got.shape == expected_shape
    colours = {tuple(colour) for colour in np.unique(got.reshape(-1, 3), axis=0)}
    assert colours <= {tuple(colour) for colour in PALETTE} and len(colours) > 1
    # At 64 the image is segmented at 512 × 512 and the map keeps its top-left 64 × 64.
    if resolution == 64:
        full = AnnotatorStore(demo_models).get("anime_face_segment")(image)
        np.testing.assert_array_equal(got, full[:64, :64])
