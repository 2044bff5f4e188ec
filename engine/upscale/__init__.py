"""Upscalers for hires fix and extras: A1111's latent modes, PIL resamplers and ESRGAN-family models."""
