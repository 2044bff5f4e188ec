"""seg_anime_face (`anime_face_segment`) as sd-webui-controlnet v1.1.455 runs it (`annotator/anime_face_segment`,
after siyeong0/Anime-Face-Segmentation, MIT): a U-Net whose encoder is torchvision's MobileNetV2 features and whose
decoder upsamples back with skip connections, 7 classes, each pixel painted its class's colour.

The image is resized so its short side is 512 (PIL bicubic, torchvision's `Resize(512)`), scaled to [0, 1] and
segmented at that size: sd-webui-controlnet returns the map at that scale (cutting its pad off at the processor
resolution's size, so a resolution other than 512 leaves a map of another size, which the unit then fits).
"""

import numpy as np
import torch
from torch import nn


NETWORK_SHORT_SIDE = 512
# Background, hair, eye, mouth, face, skin, clothes.
PALETTE = np.array([(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255),
                    (255, 0, 255)], np.uint8)
# MobileNetV2 feature blocks per encoder stage, and the decoder's (in, out) channels per stage (4 … 0).
ENCODER_BLOCKS = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9, 10, 11, 12, 13), (14, 15, 16))
DECODER_CHANNELS = ((160, 96), (96 * 2, 32), (32 * 2, 24), (24 * 2, 16))
LEAKY_SLOPE, DROPOUT = 0.1, 0.2


def _decoder_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), nn.Conv2d(channels_in, channels_out, 3, padding=1),
                         nn.InstanceNorm2d(channels_out), nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(p=DROPOUT))


class AnimeFaceUNet(nn.Module):
    """The published network's module layout (`en_block0..4`, `de_block4..0`), so its checkpoint loads as is."""

    def __init__(self):
        from torchvision.models import mobilenet_v2

        super().__init__()
        features = mobilenet_v2(weights=None).features
        for stage, blocks in enumerate(ENCODER_BLOCKS):
            setattr(self, f"en_block{stage}", nn.Sequential(*(features[index] for index in blocks)))
        for stage, (channels_in, channels_out) in zip((4, 3, 2, 1), DECODER_CHANNELS, strict=True):
            setattr(self, f"de_block{stage}", _decoder_block(channels_in, channels_out))
        self.de_block0 = nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2),
                                       nn.Conv2d(16 * 2, len(PALETTE), 3, padding=1), nn.Softmax2d())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        skips = []
        features = pixels
        for stage in range(5):
            features = getattr(self, f"en_block{stage}")(features)
            skips.append(features)
        decoded = skips[4]
        for stage in (4, 3, 2, 1):
            decoded = getattr(self, f"de_block{stage}")(decoded)
            skip = skips[stage - 1]
            decoded = nn.functional.interpolate(decoded, size=skip.shape[2:], mode="bilinear", align_corners=True)
            decoded = torch.cat((decoded, skip), 1)
        return self.de_block0(decoded)


def load_anime_face(weights: dict) -> AnimeFaceUNet:
    """The network with the checkpoint's weights (a DataParallel `module.` prefix is dropped, as the extension
    does), built on the meta device."""
    with torch.device("meta"):
        network = AnimeFaceUNet()
    network.load_state_dict({key.replace("module.", ""): value for key, value in weights.items()}, strict=True,
                            assign=True)
    return network.eval()


class AnimeFaceSegmenter:
    """`AnimeFaceSegment.__call__`: the colour map at the network's scale (short side 512)."""

    def __init__(self, network: AnimeFaceUNet):
        self.network = network

    def to(self, device):
        self.network.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image
        from torchvision import transforms

        resize = transforms.Resize(NETWORK_SHORT_SIDE, interpolation=transforms.InterpolationMode.BICUBIC)
        pixels = transforms.ToTensor()(resize(Image.fromarray(image)))[None]
        parameter = next(self.network.parameters())
        scores = self.network(pixels.to(parameter.device, parameter.dtype))[0]
        return PALETTE[scores.argmax(dim=0).cpu().numpy()]
