"""Loading a diffusers text-to-image pipeline, encoding prompts, calling the UNet, fingerprinting it.

Everything else in ConceptVault reaches the text encoders through :func:`encode_prompts` and the UNet
through :func:`unet_predict`, so a model family with a different text stack only needs this module to
learn it. Stable Diffusion XL has two text encoders and conditions its UNet on the pooled text embedding
and on size "time ids" besides the text states; ConceptVault carries those two in one extra row appended
to the text states (``(B, 78, d)``), which :func:`unet_predict` unpacks, so that a prompt's conditioning
stays one tensor everywhere (cached, expanded, concatenated for guidance).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from .digest import tensor_digest
from .errors import ConceptVaultError
from .key import is_key_parameter

BUILTIN = "builtin"  # the built-in Shapes model: its profile (conceptvault.world.profile) names its folder
COMPONENTS = ("unet", "text_encoder", "vae", "tokenizer", "scheduler")
SDXL_COMPONENTS = (*COMPONENTS, "text_encoder_2", "tokenizer_2")
PIPELINES = (StableDiffusionPipeline, StableDiffusionXLPipeline)
_MODEL_ATTRIBUTE = "conceptvault_model"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Load a Stable Diffusion 1.x / 2.x / XL pipeline from ``"builtin"``, a local diffusers folder or a hub id;
    the pipeline class comes from the folder's ``model_index.json``.

    The hub honours ``HF_HUB_OFFLINE`` and ``cache_dir`` as diffusers does. The safety checker is not
    loaded, the pipeline's own progress bar is turned off, and the model name is remembered for
    :func:`model_name`.
    """
    source, replaced = _resolve_source(model)
    options = dict(safety_checker=None, requires_safety_checker=False, cache_dir=cache_dir)
    if dtype is not None:
        options["torch_dtype"] = dtype
    try:
        with warnings.catch_warnings():  # newer diffusers renames torch_dtype; both spellings mean the same
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            components = {name: _load_component(source, name, folder, dtype) for name, folder in replaced.items()}
            pipe = DiffusionPipeline.from_pretrained(source, **components, **options)
    except (OSError, ValueError) as error:
        raise ConceptVaultError(_load_failure(model, source, error)) from None
    if not isinstance(pipe, PIPELINES):
        raise ConceptVaultError(
            f"'{model}' is a {type(pipe).__name__}; give a Stable Diffusion 1.x, 2.x or XL text-to-image pipeline."
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device or default_device())
    setattr(pipe, _MODEL_ATTRIBUTE, model)
    return pipe


def _resolve_source(model: str) -> tuple[str, dict[str, Path]]:
    """A local folder (checked) or a hub id (passed on), and the components its profile loads from elsewhere."""
    from .profiles import profile_for  # a profile may name a folder of its own for a model (the built-in one)

    profile = profile_for(model)
    folder = profile.model_folder(model)
    if folder is not None:
        return str(_check_folder(folder, shown_as=profile.title)), profile.component_folders(model)
    path = Path(model).expanduser()
    if path.exists():
        return str(_check_folder(path, shown_as=model)), {}
    if _looks_like_path(model):
        raise ConceptVaultError(
            f"the model folder '{model}' does not exist; give a diffusers pipeline folder, a hub id "
            f"such as 'runwayml/stable-diffusion-v1-5', or '{BUILTIN}'."
        )
    return model, {}


def _load_component(source: str, name: str, folder: Path, dtype: torch.dtype | None):
    """The component ``name`` of the pipeline in ``source``, loaded from ``folder`` with the library and class
    ``source``'s ``model_index.json`` names for it."""
    library, class_name = json.loads((Path(source) / "model_index.json").read_text())[name]
    return getattr(importlib.import_module(library), class_name).from_pretrained(folder, torch_dtype=dtype)


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
    needed = SDXL_COMPONENTS if listed.get("_class_name") == StableDiffusionXLPipeline.__name__ else COMPONENTS
    missing = [name for name in needed if name not in listed or not (path / name).is_dir()]
    if missing:
        raise ConceptVaultError(
            f"'{shown_as}' is not a text-to-image diffusers pipeline: it lacks {', '.join(missing)}; "
            "give a Stable Diffusion 1.x, 2.x or XL pipeline folder."
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


def model_name(pipe) -> str:
    """The name the pipeline was loaded under: a folder, a hub id, or ``"builtin"``."""
    name = getattr(pipe, _MODEL_ATTRIBUTE, None)
    return name or str(pipe.config.get("_name_or_path", "") or "unknown")


def is_sdxl(unet: torch.nn.Module) -> bool:
    """Whether the UNet is conditioned on pooled text and size ids besides the text states (SDXL)."""
    return unet.config.get("addition_embed_type") == "text_time"


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """The text states ``(B, 77, d)`` exactly as the pipeline feeds the UNet; for SDXL ``(B, 78, d)``, the last
    row carrying the pooled text embedding and the size ids (see the module's docstring)."""
    prompts = list(prompts)
    if not is_sdxl(pipe.unet):
        states, _ = pipe.encode_prompt(
            prompt=prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return states
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    if pipe.config.get("force_zeros_for_empty_prompt", False):  # the pipeline's unconditional branch: zeros
        empty = torch.tensor([p == "" for p in prompts], device=states.device)
        states = torch.where(empty[:, None, None], torch.zeros_like(states), states)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=states.dtype, device=states.device)
    row = torch.zeros(len(prompts), 1, states.shape[-1], dtype=states.dtype, device=states.device)
    row[:, 0, : pooled.shape[-1]] = pooled
    row[:, 0, pooled.shape[-1] : pooled.shape[-1] + 6] = time_ids
    return torch.cat([states, row], dim=1)


def unet_predict(unet, z: torch.Tensor, t, states: torch.Tensor, cross_attention_kwargs: dict | None = None):
    """``unet(z, t, states)``'s prediction, with SDXL's packed conditioning unpacked into ``added_cond_kwargs``."""
    if not is_sdxl(unet):
        return unet(z, t, states, cross_attention_kwargs=cross_attention_kwargs).sample
    pooled_width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    row = states[:, -1]
    added = {"text_embeds": row[:, :pooled_width], "time_ids": row[:, pooled_width : pooled_width + 6]}
    return unet(z, t, states[:, :-1], added_cond_kwargs=added, cross_attention_kwargs=cross_attention_kwargs).sample


def text_tokens(unet, states: torch.Tensor) -> torch.Tensor:
    """The per-token text states alone: SDXL's packed row dropped."""
    return states[:, :-1] if is_sdxl(unet) else states


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """SHA-256 over every UNet tensor's name, shape and float16 bytes, excluding attached key processors.

    Float16 bytes make a model loaded in float16 and the same model in float32 agree.
    """
    state = {name: tensor for name, tensor in unet.state_dict().items() if not is_key_parameter(name)}
    return tensor_digest(state, cast=torch.float16)
