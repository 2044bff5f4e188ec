"""ControlNet units, InstantID and IP-Adapter units, as A1111's sd-webui-controlnet (and Forge) apply them, on diffusers models."""
