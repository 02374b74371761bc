"""The built-in Shapes world: a procedural world of coloured, styled shapes, a small Stable Diffusion
pipeline trained on it, and a judge that says what an image shows."""

from pathlib import Path

from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES

WEIGHTS_DIR = Path(__file__).parent / "weights"
SAMPLE_STEPS = 25  # how the built-in model is sampled everywhere: DDIM steps, trailing spacing
GUIDANCE = 3.0  # and classifier-free guidance
BUILTIN_MODEL_DIR = WEIGHTS_DIR / "model"

__all__ = ["BUILTIN_MODEL_DIR", "COLOURS", "GUIDANCE", "SAMPLE_STEPS", "SHAPES", "STYLES", "WEIGHTS_DIR"]
