"""`A1111Pipeline`: a diffusers pipeline over SD1.5/SDXL components whose passes follow A1111."""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from PIL import Image

from engine.imaging import vae_tiling
from engine.imaging.vae_tiling import VaeTiling
from engine.prompts.embeddings import SDXL_KEYS
from engine.prompts.encode import ClipSlot, Parser, PromptEncoder
from engine.speedups import StepCaching


# An inpainting UNet reads the noisy latent (4 channels), the mask (1) and the masked image's latent (4).
INPAINTING_IN_CHANNELS = 9
# A1111's `inpainting_mask_weight` option (default 1.0; infotext "Conditional mask weight"): how far the
# conditioning image is masked, 1.0 = the masked area fully blanked.
INPAINTING_MASK_WEIGHT = 1.0
# The textual-inversion vectors OpenCLIP-G reads in an SDXL embedding file.
CLIP_G_KEY = SDXL_KEYS[1]


class A1111Pipeline(DiffusionPipeline):
    """Holds a checkpoint's components; the generation recipe drives it pass by pass.

    Components:
        vae: `AutoencoderKL`; unet: `UNet2DConditionModel` (epsilon prediction);
        text_encoder + tokenizer: CLIP-L (None for the SDXL refiner);
        text_encoder_2 + tokenizer_2: OpenCLIP-G (SDXL and its refiner only);
        scheduler: the checkpoint's scheduler, used only as the config for per-request samplers.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]

    def __init__(
        self, vae, unet, scheduler, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None
    ):
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
        # Rows per UNet call (None: the whole CFG batch at once); views for a lower-memory retry lower it.
        self.unet_rows_per_call: int | None = None
        # DeepCache step caching for every pass on this UNet (the worker's DEEPCACHE_* settings); None: off.
        self.step_caching: StepCaching | None = None

    @property
    def is_sdxl(self) -> bool:
        """SDXL's latent space and conditioning (pooled vector, size ids): the base and the refiner."""
        return self.text_encoder_2 is not None

    @property
    def is_refiner(self) -> bool:
        """stable-diffusion-xl-refiner-1.0's shape: OpenCLIP-G alone, an aesthetic score among the added ids."""
        return self.text_encoder is None and self.text_encoder_2 is not None

    @property
    def family(self) -> str:
        if self.is_refiner:
            return "sdxl_refiner"
        return "sdxl" if self.is_sdxl else "sd15"

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel UNet (sd-v1-5-inpainting, SDXL inpainting): every pass feeds it the masked image."""
        return self.unet.config.in_channels == INPAINTING_IN_CHANNELS

    def with_vae(self, vae) -> "A1111Pipeline":
        """A pipeline sharing every component but the VAE, for one request's `sd_vae`; `self` is untouched."""
        view = A1111Pipeline(**{**self.components, "vae": vae})
        view.vae_tiling = self.vae_tiling
        view.unet_rows_per_call = self.unet_rows_per_call
        view.step_caching = self.step_caching
        return view

    def with_low_memory(self, vae_tiling: VaeTiling, unet_rows_per_call: int) -> "A1111Pipeline":
        """A view sharing every component that runs the VAE in `vae_tiling`'s tiles and the UNet on at most
        `unet_rows_per_call` rows at a time, for one retried request; `self` is untouched."""
        view = A1111Pipeline(**self.components)
        view.vae_tiling = vae_tiling
        view.unet_rows_per_call = unet_rows_per_call
        view.step_caching = self.step_caching
        return view

    def prompt_encoder(self, parse: Parser, comma_backtrack: int = 20) -> PromptEncoder:
        """The text side as A1111 runs it: SD1.5's CLIP-L honours CLIP skip; SDXL's two encoders
        both take the penultimate layer (A1111 ignores CLIP skip there) and OpenCLIP-G gives the pooled vector."""
        if self.is_refiner:
            # A1111's refiner conditioner: the same OpenCLIP-G embedder as SDXL's second one, on its own.
            slots = [
                ClipSlot(
                    self.tokenizer_2,
                    self.text_encoder_2,
                    pad_after_eos=0,
                    honours_clip_skip=False,
                    pooled=True,
                    embedding_key=CLIP_G_KEY,
                )
            ]
        elif not self.is_sdxl:
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

    def sdxl_time_ids(self, height: int, width: int, batch: int, aesthetic_score: float = 6.0) -> torch.Tensor:
        """SDXL's added conditions as A1111 sends them (`sd_models_xl.get_learned_conditioning`): original =
        target = this pass's size, crop (0, 0); the refiner reads (original size, crop, aesthetic score)."""
        if self.is_refiner:
            row = [height, width, 0, 0, aesthetic_score]
        else:
            row = [height, width, 0, 0, height, width]
        ids = torch.tensor([row], dtype=torch.float32, device=self.unet.device)
        return ids.repeat(batch, 1)

    def decode_to_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE-decode one image at a time (A1111's `decode_latent_batch`), then clamp and *truncate*
        to uint8 as A1111 does (diffusers rounds)."""
        images = []
        for latent in latents:
            images.append(decoded_to_image(self.decode_latents(latent[None])[0]))
        return images

    def encode_images(self, images: list[Image.Image], generator: torch.Generator) -> torch.Tensor:
        """VAE-encode a batch of images as A1111's `images_tensor_to_samples`: pixels to [-1, 1], then a *sample*
        of the posterior (not its mean), the noise drawn in fp32 on the CPU from `generator`, × scaling factor."""
        return self.encode_pixels(_signed_pixels(images), generator)

    def encode_pixels(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`encode_images` for a (batch, 3, height, width) tensor already in [-1, 1]."""
        vae = self.vae
        pixels = pixels.to(device=vae.device, dtype=vae.dtype)
        posterior = vae_tiling.encode(vae, pixels, self.vae_tiling)
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        sample = posterior.mean.float() + posterior.std.float() * noise.to(vae.device)
        return sample * vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        return vae_tiling.decode(vae, latents.to(vae.dtype) / vae.config.scaling_factor, self.vae_tiling)

    def inpainting_conditioning(
        self,
        images: list[Image.Image],
        masks: list[Image.Image],
        generator: torch.Generator,
        round_mask: bool = True,
    ) -> torch.Tensor:
        """An inpainting UNet's input besides the latent in img2img (A1111 `inpainting_image_conditioning`).

        Args:
            images: the init images at the pass's size, as the VAE encodes them.
            masks: per image, the processed "L" mask at the same size (white = repaint). Without a mask
                A1111 masks everything: that is `full_mask_conditioning` (the blanked image is plain gray).
            generator: draws the VAE posterior's sample (A1111 samples it, as for the init latents).
            round_mask: A1111 rounds the mask to 0/1 first (`mask_round`, default on).

        Returns:
            (batch, 5, height / 8, width / 8): the mask, resized nearest-neighbour to latent size, then the
            latent of the image blanked (0 in [-1, 1], i.e. gray) under the mask.
        """
        pixels = _signed_pixels(images)
        mask = torch.stack([torch.from_numpy(np.asarray(m.convert("L"), dtype=np.float32)) for m in masks])
        mask = mask[:, None] / 255.0
        mask = torch.round(mask) if round_mask else mask
        masked = torch.lerp(pixels, pixels * (1.0 - mask), INPAINTING_MASK_WEIGHT)
        latents = self.encode_pixels(masked, generator)
        small_mask = F.interpolate(mask, size=latents.shape[-2:]).to(latents)
        return torch.cat([small_mask, latents], dim=1)

    def full_mask_conditioning(self, batch: int, width: int, height: int, generator: torch.Generator):
        """An inpainting UNet's extra input in txt2img and hires fix (A1111 `txt2img_image_conditioning`):
        everything masked, so the masked image is plain gray. Returns (batch, 5, height / 8, width / 8)."""
        latents = self.encode_pixels(torch.zeros(batch, 3, height, width), generator)
        return torch.cat([torch.ones_like(latents[:, :1]), latents], dim=1)


def _signed_pixels(images: list[Image.Image]) -> torch.Tensor:
    """RGB images as a float32 (batch, 3, height, width) tensor in [-1, 1]."""
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0) for image in images]
    )
    return pixels.permute(0, 3, 1, 2) * 2.0 - 1.0


def decoded_to_image(decoded: torch.Tensor) -> Image.Image:
    """A VAE output (3, height, width) in [-1, 1] as A1111's `sd_samplers_common` makes it an image:
    `(255 * clamp((x + 1) / 2, 0, 1)).astype(uint8)`, truncating. The uint8 conversion runs on the decoder's
    device, so a quarter of the bytes cross to the host; the fp32 product and truncation are numpy's, so the
    pixels are the same."""
    pixels = torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0)
    return Image.fromarray(pixels.mul_(255.0).to(torch.uint8).permute(1, 2, 0).cpu().numpy())
