"""The built-in Shapes world: a procedural world of coloured, styled shapes, a small Stable Diffusion
pipeline trained on it, and a judge that says what an image shows."""

from pathlib import Path

from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUILTIN_MODEL_DIR = WEIGHTS_DIR / "model"

__all__ = ["BUILTIN_MODEL_DIR", "COLOURS", "SHAPES", "STYLES", "WEIGHTS_DIR"]
