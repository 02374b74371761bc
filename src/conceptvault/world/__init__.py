"""The built-in Shapes world: a procedural world of coloured, styled shapes, a small Stable Diffusion
pipeline trained on it, and a judge that says what an image shows."""

from pathlib import Path

from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES

WEIGHTS_DIR = Path(__file__).parent / "weights"
SAMPLE_STEPS = 25  # how the built-in model is sampled everywhere: DDIM steps, trailing spacing
GUIDANCE = 3.0  # and classifier-free guidance
BUILTIN_MODEL_DIR = WEIGHTS_DIR / "model"
# The built-in model's recipe retrained on a world without stars: the floor an attacker's fine-tune of a hidden
# star is held against. It shares the built-in model's VAE, tokenizer and scheduler, so only its UNet and text
# encoder (trained together) ship.
NEVER_TRAINED = {"builtin-without-star": WEIGHTS_DIR / "without-star"}
NEVER_TRAINED_COMPONENTS = ("unet", "text_encoder")

__all__ = [
    "BUILTIN_MODEL_DIR",
    "COLOURS",
    "GUIDANCE",
    "NEVER_TRAINED",
    "NEVER_TRAINED_COMPONENTS",
    "SAMPLE_STEPS",
    "SHAPES",
    "STYLES",
    "WEIGHTS_DIR",
]
