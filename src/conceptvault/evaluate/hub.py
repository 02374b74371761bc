"""Loading a judge's network from a local folder or a hub id, with one clear error when it cannot be found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conceptvault.errors import ConceptVaultError


def default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(loader: Any, model: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(model)``; a missing folder or an uncached hub id becomes one clear line."""
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if looks_local and not Path(model).expanduser().exists():
        raise ConceptVaultError(
            f"the {what} folder {model!r} does not exist; give a folder saved with save_pretrained."
        )
    try:
        return loader.from_pretrained(str(Path(model).expanduser()) if looks_local else model, **kwargs)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConceptVaultError(
            f"could not load the {what} {model!r} ({reason}); run once with network access to fill the Hugging Face "
            "cache, or give a local folder as the suite's judge_model."
        ) from error
