"""Build the CLIP BPE tokenizer files offline from the vocabulary that ``open_clip_torch`` ships.

Run once at build time; the resulting ``vocab.json`` and ``merges.txt`` ship with the built-in model,
so nothing here runs on a user's machine.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# CLIP keeps the first 48,894 merges of the file (49,152 - 256 - 2 entries after the header line).
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=False))


def build_tokenizer_files(bpe_gz: Path, out_dir: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for ``CLIPTokenizer`` into ``out_dir``."""
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    pairs = [tuple(line.split()) for line in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab += [token + "</w>" for token in vocab]
    vocab += ["".join(pair) for pair in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
