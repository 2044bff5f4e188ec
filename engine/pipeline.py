"""`A1111Pipeline`: a diffusers pipeline over SD1.5/SDXL components whose passes follow A1111."""

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from engine.imaging import vae_tiling
from engine.imaging.vae_tiling import VaeTiling
from engine.prompts.encode import ClipSlot, Parser, PromptEncoder


class A1111Pipeline(DiffusionPipeline):
    """Holds a checkpoint's components; the generation recipe drives it pass by pass.

    Components:
        vae: `AutoencoderKL`; unet: `UNet2DConditionModel` (epsilon prediction);
        text_encoder + tokenizer: CLIP-L; text_encoder_2 + tokenizer_2: OpenCLIP-G (SDXL only);
        scheduler: the checkpoint's scheduler, used only as the config for per-request samplers.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, text_encoder_2=None, tokenizer_2=None):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # When the VAE runs in tiles (large hires images); automatic unless the worker's settings say otherwise.
        self.vae_tiling = VaeTiling()

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def family(self) -> str:
        return "sdxl" if self.is_sdxl else "sd15"

    def prompt_encoder(self, parse: Parser, comma_backtrack: int = 20) -> PromptEncoder:
        """The text side as A1111 runs it: SD1.5's CLIP-L honours CLIP skip; SDXL's two encoders
        both take the penultimate layer (A1111 ignores CLIP skip there) and OpenCLIP-G gives the pooled vector."""
        if not self.is_sdxl:
            slots = [ClipSlot(self.tokenizer, self.text_encoder, pad_after_eos=None, honours_clip_skip=True)]
        else:
            slots = [
                ClipSlot(self.tokenizer, self.text_encoder, pad_after_eos=None, honours_clip_skip=False),
                ClipSlot(
                    self.tokenizer_2,
                    self.text_encoder_2,
                    pad_after_eos=0,
                    honours_clip_skip=False,
                    pooled=True,
                ),
            ]
        return PromptEncoder(slots, parse, comma_backtrack)

    def sdxl_time_ids(self, height: int, width: int, batch: int) -> torch.Tensor:
        """SDXL size conditioning as A1111 sends it: original = target = this pass's size, crop (0, 0)."""
        ids = torch.tensor(
            [[height, width, 0, 0, height, width]], dtype=torch.float32, device=self.unet.device
        )
        return ids.repeat(batch, 1)

    def decode_to_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE-decode one image at a time (A1111's `decode_latent_batch`), then clamp and *truncate*
        to uint8 as A1111 does (diffusers rounds)."""
        images = []
        for latent in latents:
            decoded = self.decode_latents(latent[None])
            pixels = torch.clamp((decoded[0].float() + 1.0) / 2.0, 0.0, 1.0)
            array = (255.0 * pixels.permute(1, 2, 0).cpu().numpy()).astype(np.uint8)
            images.append(Image.fromarray(array))
        return images

    def encode_images(self, images: list[Image.Image], generator: torch.Generator) -> torch.Tensor:
        """VAE-encode a batch of images as A1111's `images_tensor_to_samples`: pixels to [-1, 1], then a *sample*
        of the posterior (not its mean), the noise drawn in fp32 on the CPU from `generator`, × scaling factor."""
        vae = self.vae
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0) for image in images]
        )
        pixels = pixels.permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        posterior = vae_tiling.encode(vae, pixels, self.vae_tiling)
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        sample = posterior.mean.float() + posterior.std.float() * noise.to(vae.device)
        return sample * vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        return vae_tiling.decode(vae, latents.to(vae.dtype) / vae.config.scaling_factor, self.vae_tiling)
