"""The concept an erasure hurts most, found as training goes and held to the original (Bui et al., *Erasing
Undesirable Concepts in Diffusion Models with Adversarial Preservation*, NeurIPS 2024).

Erasing one concept moves some others far more than the rest, and those are seldom the neutral prompts a method
preserves. The adversarial concept is a mix of the text states of real prompts (the vocabulary: the preserve
prompts, the anchors and the empty prompt), weighted by a softmax of learned logits that starts nearly all on the
empty prompt. Before each update of the erased model, a few steps of gradient ascent on the logits raise how far
the trained model's prediction is from the frozen original's at the mix; the update then holds the trained model
to the original there. Being a mix of real prompts' states, it stays among what prompts say (the paper searches
such a mix too, with Gumbel noise; here the softmax is plain, so the search draws no random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .concepts import Concept
from .objective import Objective, TextStates

START_MARGIN = 2.0  # the starting prompt holds at least 1 / (1 + e^-2), 88 %, of the weight, whatever the vocabulary
SEARCH_LR = 0.1  # Adam learning rate of the logits: a few steps move the weight visibly, not all at once


def vocabulary(concepts: Sequence[Concept], preserve: Sequence[str]) -> list[str]:
    """The prompts an adversarial concept is mixed from: the preserve prompts, the anchors and the empty prompt,
    never one of the concepts' own prompts (holding those to the original would undo the erasure)."""
    own = {prompt for concept in concepts for prompt in concept.prompts}
    prompts = [*preserve, *(anchor for concept in concepts for anchor in concept.every_anchor()), ""]
    return [prompt for prompt in dict.fromkeys(prompts) if prompt not in own]


class AdversarialConcept:
    """Text states ``(1, L, d)`` mixed from ``prompts`` by learned weights, searched to be where the trained model
    differs most from the original; its logits and their optimiser go into a run's checkpoint."""

    def __init__(self, texts: TextStates, prompts: Sequence[str], start: str = "", lr: float = SEARCH_LR):
        self.prompts = list(prompts)
        self.vocabulary = torch.cat([texts(prompt) for prompt in self.prompts])  # (K, L, d)
        logits = torch.full((len(self.prompts),), -(math.log(len(self.prompts)) + START_MARGIN))
        logits[self.prompts.index(start)] = 0.0
        self.logits = nn.Parameter(logits.to(self.vocabulary.device))
        self.optimiser = torch.optim.Adam([self.logits], lr=lr)

    def weights(self) -> torch.Tensor:
        """Each prompt's share of the mix (they sum to 1)."""
        return torch.softmax(self.logits, dim=0)

    def _mix(self) -> torch.Tensor:
        weights = self.weights().to(self.vocabulary.dtype)
        return torch.einsum("k,kld->ld", weights, self.vocabulary).unsqueeze(0)

    def states(self) -> torch.Tensor:
        """The adversarial concept's text states as the last search left them, without gradients."""
        with torch.no_grad():
            return self._mix()

    def search(self, objective: Objective, z: torch.Tensor, t: torch.Tensor, steps: int) -> None:
        """``steps`` of gradient ascent on the logits, raising ``objective.gap`` at ``(z, t)``: the trained model's
        distance from the original there. Only the logits get gradients (the trained weights' stay untouched)."""
        for _ in range(steps):
            gap = objective.gap(z, t, self._mix())
            (gradient,) = torch.autograd.grad(gap, [self.logits])
            self.logits.grad = -gradient
            self.optimiser.step()

    def loss(self, prediction: torch.Tensor, objective: Objective, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The preservation term: ``prediction`` (the trained model's at ``(z, t, states())``, in the loss space)
        held to the frozen original's there."""
        return torch.nn.functional.mse_loss(prediction, objective.teacher(z, t, self.states()))

    def strongest(self, count: int = 3) -> dict[str, float]:
        """The ``count`` prompts with the largest weights, largest first, with their weights: what was found."""
        weights = self.weights().detach().cpu()
        order = torch.argsort(weights, descending=True)[:count]
        return {self.prompts[i]: round(float(weights[i]), 4) for i in order.tolist()}

    def state_dict(self) -> dict:
        return {"logits": self.logits.detach().cpu().clone(), "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        with torch.no_grad():
            self.logits.copy_(saved["logits"])
        self.optimiser.load_state_dict(saved["optimiser"])
