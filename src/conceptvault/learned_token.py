"""A learned input token: the embedding of a meaningless placeholder token, trained so that prompts naming it
bring a concept back. Attacks learn one against a public model; sealed hiding re-learns one as it trains.
"""

from __future__ import annotations

import re

import torch

PLACEHOLDER = "sks"  # one CLIP token that carries no meaning of its own: the learned token's slot


def name_the_token(prompts: list[str], names: list[str]) -> list[str]:
    """``prompts`` with each of the concept's ``names`` replaced by the learned token's placeholder (the
    placeholder appended to a prompt that names none of them)."""
    pattern = re.compile("|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)), re.IGNORECASE)
    return [pattern.sub(PLACEHOLDER, p) if pattern.search(p) else f"{p}, {PLACEHOLDER}" for p in prompts]


class LearnedToken:
    """The embedding of a meaningless input token, learned: while hooked, the text encoder reads this vector
    wherever a prompt holds the placeholder. It starts at the embedding of the concept name's first token."""

    def __init__(self, pipe, name: str):
        self.pipe = pipe
        self.id = pipe.tokenizer.convert_tokens_to_ids(PLACEHOLDER + "</w>")
        embedding = pipe.text_encoder.get_input_embeddings()
        first = pipe.tokenizer(name).input_ids[1]
        self.vector = torch.nn.Parameter(embedding.weight[first].detach().clone().float())

    def hook(self):
        """Put the vector into the text encoder; returns the handle whose ``remove()`` takes it out."""

        def substitute(module, inputs, output):
            return torch.where((inputs[0] == self.id).unsqueeze(-1), self.vector.to(output.dtype), output)

        return self.pipe.text_encoder.get_input_embeddings().register_forward_hook(substitute)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Text states of prompts that name the placeholder (the vector counts only while hooked)."""
        ids = self.pipe.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return self.pipe.text_encoder(ids.to(self.pipe.device))[0]
