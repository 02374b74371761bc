"""Where an evaluation keeps its images, so that an interrupted run continues where it stopped.

Images live under ``OUT/images/<variant>/<concept>/<index>-s<seed>-<prompt hash>.png``: keyed by the model
variant (original, public, key), the prompt's index and its seed, with a short hash of the prompt text
so that an edited suite never reuses a stale image. Each variant folder holds ``identity.json``, what
made its images (model fingerprint, sampler settings); a folder made by something else is refused
rather than silently mixed. Every file is written to a temporary name and renamed, so a killed run
never leaves half an image.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from conceptvault.errors import ConceptVaultError
from conceptvault.files import atomic_write, atomic_write_text, slug

IMAGES_DIR = "images"
IDENTITY_FILE = "identity.json"


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]


class ImageStore:
    """PNG images of one evaluation, keyed by (variant, concept, prompt index, seed, prompt).

    ``shared`` maps a variant to a folder of its own outside ``root``: evaluations of several vaults made
    from one base model share the original model's images that way (made once; the identity check still
    refuses images made by another model or with other settings).
    """

    def __init__(self, root: str | Path, shared: dict[str, Path] | None = None) -> None:
        self.root = Path(root)
        self.shared = {variant: Path(folder) for variant, folder in (shared or {}).items()}

    def folder(self, variant: str) -> Path:
        return self.shared.get(variant, self.root / IMAGES_DIR / variant)

    def path(self, variant: str, concept: str, index: int, seed: int, prompt: str) -> Path:
        name = f"{index:05d}-s{seed}-{prompt_hash(prompt)}.png"
        return self.folder(variant) / slug(concept) / name

    def has(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size > 0

    def save(self, path: Path, image: Image.Image) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write(path, buffer.getvalue())

    def load(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise ConceptVaultError(
                f"image {str(path)!r} is unreadable ({error}); delete it and run again."
            ) from error

    def claim(self, variant: str, identity: dict) -> None:
        """Record what makes this variant's images, or check that the folder was made by the same thing."""
        path = self.folder(variant) / IDENTITY_FILE
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded != identity:
                changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
                raise ConceptVaultError(
                    f"{str(path.parent)!r} holds images made with different {', '.join(changed)}; "
                    "give another output folder or delete that one to start afresh."
                )
            return
        atomic_write_text(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")
