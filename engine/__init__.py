"""An A1111-compatible image-generation engine on native Hugging Face diffusers.

`from engine import Engine, Settings`. Heavy imports (torch, diffusers) happen on first use of
`Engine`, so the pure layers (wire format, plan, prompt parsing, sampler tables) load instantly.
"""

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from engine.service import Engine
    from engine.settings import Settings

__all__ = ["Engine", "Settings"]


def __getattr__(name: str):
    if name == "Engine":
        from engine.service import Engine

        return Engine
    if name == "Settings":
        from engine.settings import Settings

        return Settings
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
