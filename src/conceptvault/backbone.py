"""Loading a diffusers text-to-image pipeline, encoding prompts, and fingerprinting its UNet.

Everything else in ConceptVault reaches the text encoder through :func:`encode_prompts`, so a model
family with a different text stack (SDXL's two encoders) only needs this module to learn it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from .errors import ConceptVaultError
from .key import is_key_parameter

BUILTIN = "builtin"  # the built-in Shapes model, resolved through conceptvault.world.BUILTIN_MODEL_DIR
COMPONENTS = ("unet", "text_encoder", "vae", "tokenizer", "scheduler")
_MODEL_ATTRIBUTE = "conceptvault_model"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion 1.x / 2.x pipeline from ``"builtin"``, a local diffusers folder or a hub id.

    The hub honours ``HF_HUB_OFFLINE`` and ``cache_dir`` as diffusers does. The safety checker is not
    loaded, the pipeline's own progress bar is turned off, and the model name is remembered for
    :func:`model_name`.
    """
    source = _resolve_source(model)
    options = dict(safety_checker=None, requires_safety_checker=False, cache_dir=cache_dir)
    if dtype is not None:
        options["torch_dtype"] = dtype
    try:
        with warnings.catch_warnings():  # newer diffusers renames torch_dtype; both spellings mean the same
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(source, **options)
    except (OSError, ValueError) as error:
        raise ConceptVaultError(_load_failure(model, source, error)) from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device or default_device())
    setattr(pipe, _MODEL_ATTRIBUTE, model)
    return pipe


def _resolve_source(model: str) -> str:
    """A local folder (checked) or a hub id (passed on)."""
    if model == BUILTIN:
        folder = _builtin_folder()
        if not (folder / "model_index.json").is_file():
            raise ConceptVaultError(
                f"the built-in model is not built yet (no model_index.json in '{folder}'); build it first, "
                "or give a diffusers pipeline folder or a hub id."
            )
        return str(_check_folder(folder, shown_as="the built-in model"))
    path = Path(model).expanduser()
    if path.exists():
        return str(_check_folder(path, shown_as=model))
    if _looks_like_path(model):
        raise ConceptVaultError(
            f"the model folder '{model}' does not exist; give a diffusers pipeline folder, a hub id "
            f"such as 'runwayml/stable-diffusion-v1-5', or '{BUILTIN}'."
        )
    return model


def _builtin_folder() -> Path:
    try:
        from .world import BUILTIN_MODEL_DIR
    except ImportError:
        raise ConceptVaultError(
            "the built-in model is not part of this installation; "
            "give a diffusers pipeline folder or a hub id instead."
        ) from None
    return Path(BUILTIN_MODEL_DIR)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model


def _check_folder(path: Path, *, shown_as: str) -> Path:
    """A folder that holds a text-to-image diffusers pipeline, or a one-line error saying what is missing."""
    if not path.is_dir():
        raise ConceptVaultError(f"'{shown_as}' is a file, not a folder; give a diffusers pipeline folder.")
    index = path / "model_index.json"
    if not index.is_file():
        raise ConceptVaultError(
            f"'{shown_as}' is not a diffusers pipeline folder (it has no model_index.json); "
            "save the model with pipe.save_pretrained(...) or give a hub id."
        )
    try:
        listed = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConceptVaultError(f"'{index}' is not valid JSON; the model folder is damaged.") from None
    missing = [name for name in COMPONENTS if name not in listed or not (path / name).is_dir()]
    if missing:
        raise ConceptVaultError(
            f"'{shown_as}' is not a text-to-image diffusers pipeline: it lacks {', '.join(missing)}; "
            "give a Stable Diffusion 1.x or 2.x pipeline folder."
        )
    return path


def _load_failure(model: str, source: str, error: Exception) -> str:
    reason = _first_sentence(str(error))
    if source != model or Path(source).exists():
        return (
            f"could not load the model '{model}' ({reason}); check that the folder is a complete diffusers pipeline."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        hint = "HF_HUB_OFFLINE is set, so only cached models load; download it first or unset HF_HUB_OFFLINE"
    else:
        hint = "check the hub id and the connection, or give a local folder"
    return f"could not load '{model}' from the Hugging Face hub: it is not in the local cache ({reason}); {hint}."


def _first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    sentence = text.split(". ")[0].split(" (")[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rsplit(" ", 1)[0] + "..."


def model_name(pipe: StableDiffusionPipeline) -> str:
    """The name the pipeline was loaded under: a folder, a hub id, or ``"builtin"``."""
    name = getattr(pipe, _MODEL_ATTRIBUTE, None)
    return name or str(pipe.config.get("_name_or_path", "") or "unknown")


@torch.no_grad()
def encode_prompts(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states ``(B, 77, d)``, exactly as the pipeline feeds the UNet."""
    states, _ = pipe.encode_prompt(
        prompt=list(prompts), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return states


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """SHA-256 over every UNet tensor's name, shape and float16 bytes, excluding attached key processors.

    Float16 bytes make a model loaded in float16 and the same model in float32 agree.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        if is_key_parameter(name):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float16)
    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()
