"""ControlNet units and InstantID, as A1111's sd-webui-controlnet (and Forge) apply them, on diffusers models."""
