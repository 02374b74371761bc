"""Attacks that search the text side of the public model for a prompt that brings a hidden concept back.

- ``ring-a-bell`` (after Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
  Models?", ICLR 2024): the concept as a direction in text-state space (the mean difference of the states of
  prompts with and without it), added to benign prompts' states; a discrete search over words of the
  vocabulary then finds prompts whose states come closest to those targets. Only the text encoder is used.
  The paper searches with a genetic algorithm; here a greedy coordinate search ranks each position's
  candidate words by the gradient of the distance and keeps the best of a batch of one-word swaps.
- ``unlearndiff`` (after Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still
  Easy to Generate Unsafe Images ... For Now", 2023): a few words prepended to the concept's prompts,
  optimised by the diffusion model's own denoising loss on pictures of the concept; a continuous copy takes
  the gradient and the forward pass reads its nearest vocabulary words (as in PEZ), so every prompt the
  attack measures is plain text.

Neither attack names the concept's words in what it learns (Ring-A-Bell's words exclude them; UnlearnDiff
prepends to the suite's own prompts) and neither changes a weight of the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .backbone import encode_prompts, is_sdxl
from .errors import ConceptVaultError
from .evaluate.suite import SuiteConcept

RING_A_BELL_TOKENS = 16  # words of a Ring-A-Bell prompt (the paper's length for nudity)
RING_A_BELL_STRENGTH = 3.0  # how far along the concept's direction the targets lie (the paper's eta)
RING_A_BELL_TARGETS = 4  # benign prompts, each with its own target and found prompt
RING_A_BELL_CANDIDATES = 32  # one-word swaps tried per target and step
RING_A_BELL_TOP = 64  # the words, by gradient, a swap at one position is drawn from
UNLEARNDIFF_TOKENS = 5  # words prepended by UnlearnDiff (the paper's count)

_WORD = re.compile(r"[a-z]+")
_vocabularies: dict[int, torch.Tensor] = {}  # a tokenizer's word tokens, by its vocabulary


def word_tokens(tokenizer) -> torch.Tensor:
    """Ids of the tokenizer's whole-word tokens (lower-case letters), each read back as itself alone: words of
    them joined by spaces tokenize to exactly those tokens, so a searched prompt is plain text."""
    vocabulary = tokenizer.get_vocab()
    known = hash(tuple(sorted(vocabulary.items())))  # a tokenizer loaded again reads its words alike
    if known not in _vocabularies:
        words = [(t[:-4], i) for t, i in vocabulary.items() if t.endswith("</w>") and _WORD.fullmatch(t[:-4])]
        read = tokenizer([w for w, _ in words]).input_ids
        _vocabularies[known] = torch.tensor(
            sorted(i for (_, i), back in zip(words, read, strict=True) if back[1:-1] == [i])
        )
    return _vocabularies[known]


def spelled(tokenizer, ids: Sequence[int]) -> str:
    """Word tokens as the text that tokenizes back to them."""
    return " ".join(token.removesuffix("</w>") for token in tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def text_states(pipe, prompts: Sequence[str], replace: torch.Tensor | None = None) -> torch.Tensor:
    """The text states of ``prompts`` as the pipeline's text encoder gives them, with gradients; ``replace``
    ((1 or B, n, d) input embeddings) takes the place of the first n tokens after the start token."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    batch = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    mask = batch.attention_mask.to(pipe.device) if getattr(encoder.config, "use_attention_mask", False) else None
    handle = None
    if replace is not None:

        def substitute(module, inputs, output):
            output = output.clone()
            output[:, 1 : 1 + replace.shape[1]] = replace.to(output.dtype)
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(substitute)
    try:
        return encoder(batch.input_ids.to(pipe.device), attention_mask=mask)[0]
    finally:
        if handle is not None:
            handle.remove()


def _refuse_sdxl(pipe, attack: str) -> None:
    if is_sdxl(pipe.unet):
        raise ConceptVaultError(f"the {attack} attack is not implemented for SDXL's two text encoders yet.")


# -- Ring-A-Bell --------------------------------------------------------------------------------------------


def concept_pairs(concept: SuiteConcept, words: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The concept's prompts, each beside the same prompt without the concept: the suite's own unnamed prompts
    where it has them, else the prompt with the concept's words (its name, labels and ``words``) taken out;
    prompts that name none of them are left out, and the name beside the empty prompt stands in for none."""
    if concept.unnamed:
        pairs = list(zip(concept.prompts, concept.unnamed, strict=True))
    else:
        pattern = words_pattern(concept_words(concept, words))
        pairs = [(p, _tidy(pattern.sub(" ", p))) for p in concept.prompts]
    pairs = [(named, unnamed) for named, unnamed in dict.fromkeys(pairs) if named != unnamed]
    return pairs or [(concept.name, "")]


def concept_words(concept: SuiteConcept, words: Sequence[str] = ()) -> list[str]:
    """The concept's name, its labels that are words (not class indices) and ``words``, longest first."""
    found = {concept.name, *(w for w in (*concept.labels, *words) if w and not w.isdigit())}
    return sorted(found, key=len, reverse=True)


def _tidy(text: str) -> str:
    """Spaces collapsed, none before a comma, no comma left hanging at either end."""
    return " ".join(text.split()).replace(" ,", ",").strip(" ,")


def words_pattern(words: Sequence[str]) -> re.Pattern:
    """A pattern that finds any of ``words`` as whole words (a hyphen joins words), in any case."""
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])", re.IGNORECASE)


class RingABellSearch:
    """Prompts of ``tokens`` vocabulary words, searched so that their text states come close to targets: the
    states of benign prompts (the pairs' halves without the concept) plus ``strength`` times the concept's
    direction (the mean over ``pairs`` of states with the concept minus states without it)."""

    def __init__(
        self,
        pipe,
        pairs: Sequence[tuple[str, str]],
        *,
        tokens: int = RING_A_BELL_TOKENS,
        strength: float = RING_A_BELL_STRENGTH,
        exclude: Sequence[str] = (),
        seed: int = 0,
        targets: int | None = None,
        candidates: int | None = None,
        top: int | None = None,
    ):
        _refuse_sdxl(pipe, "ring-a-bell")
        targets, top = targets or RING_A_BELL_TARGETS, top or RING_A_BELL_TOP
        self.pipe, self.candidates = pipe, candidates or RING_A_BELL_CANDIDATES
        named, unnamed = (list(half) for half in zip(*pairs, strict=True))
        direction = (encode_prompts(pipe, named).float() - encode_prompts(pipe, unnamed).float()).mean(0)
        self.benign = list(dict.fromkeys(unnamed))[:targets]
        self.target = encode_prompts(pipe, self.benign).float() + strength * direction
        banned = {i for w in exclude for i in pipe.tokenizer(w).input_ids[1:-1]}
        vocabulary = word_tokens(pipe.tokenizer)
        self.vocabulary = vocabulary[~torch.isin(vocabulary, torch.tensor(sorted(banned), dtype=torch.long))]
        self.top = min(top, len(self.vocabulary))
        embedding = pipe.text_encoder.get_input_embeddings().weight.detach()
        self.table = embedding[self.vocabulary.to(embedding.device)].float()
        self.generator = torch.Generator().manual_seed(seed)
        self.choice = torch.randint(len(self.vocabulary), (len(self.benign), tokens), generator=self.generator)
        self.distance = self.distances(self.choice, self.target)

    def prompts(self, choice: torch.Tensor | None = None) -> list[str]:
        """The searched prompts as text (``choice``: rows of indices into the vocabulary; default the current)."""
        rows = self.choice if choice is None else choice
        return [spelled(self.pipe.tokenizer, self.vocabulary[row]) for row in rows]

    @torch.no_grad()
    def distances(self, choice: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean squared distance of each prompt's text states to its target row."""
        states = text_states(self.pipe, self.prompts(choice)).float()
        return ((states - target) ** 2).mean(dim=(1, 2)).cpu()

    def step(self) -> None:
        """Per target, a batch of one-word swaps, each at a random position to one of that position's words the
        gradient ranks best; the best swap is kept where it brings the prompt closer (never farther)."""
        count, length = self.choice.shape
        ranked = (-self._gradient()).topk(self.top, dim=-1).indices.cpu()  # (targets, tokens, top)
        positions = torch.randint(length, (count, self.candidates), generator=self.generator)
        picks = torch.randint(self.top, (count, self.candidates), generator=self.generator)
        trial = self.choice.unsqueeze(1).repeat(1, self.candidates, 1)
        rows = torch.arange(count).unsqueeze(1)
        trial[rows, torch.arange(self.candidates), positions] = ranked[rows, positions, picks]
        distances = self.distances(trial.flatten(0, 1), self.target.repeat_interleave(self.candidates, 0))
        best = distances.view(count, self.candidates).min(dim=1)
        better = best.values < self.distance
        self.choice[better] = trial[better, best.indices[better]]
        self.distance = torch.where(better, best.values, self.distance)

    def _gradient(self) -> torch.Tensor:
        """The gradient of the summed distance with respect to each position's one-hot choice of word."""
        one_hot = F.one_hot(self.choice, len(self.vocabulary)).to(self.table).requires_grad_(True)
        states = text_states(self.pipe, self.prompts(), replace=one_hot @ self.table).float()
        (gradient,) = torch.autograd.grad(((states - self.target) ** 2).mean(dim=(1, 2)).sum(), one_hot)
        return gradient


def ring_a_bell(
    pipe,
    recovery,
    steps: int,
    checkpoints: Sequence[int],
    pairs: Sequence[tuple[str, str]],
    *,
    exclude: Sequence[str],
    tokens: int | None,
    strength: float,
    seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Run the search for ``steps`` steps; at each checkpoint recovery is measured with the found prompts, each
    in turn on the suite's seeds. Returns the curve and what was found."""
    search = RingABellSearch(
        pipe, pairs, tokens=tokens or RING_A_BELL_TOKENS, strength=strength, exclude=exclude, seed=seed
    )
    curve, measured = [], len(recovery.concept.prompts)
    for step in range(steps + 1):
        if step in checkpoints:
            found = search.prompts()
            rate = recovery([found[i % len(found)] for i in range(measured)])
            curve.append({"steps": step, "recovery": rate.as_dict(), "distance": float(search.distance.mean())})
        if step == steps:
            break
        search.step()
        if on_step:
            on_step(step + 1, steps)
    detail = {
        "search": "greedy coordinate search over whole-word tokens, candidates ranked by gradient",
        "strength": strength,
        "pairs": len(pairs),
        "found": [
            {"prompt": p, "benign": b, "distance": float(d)}
            for p, b, d in zip(search.prompts(), search.benign, search.distance, strict=True)
        ],
    }
    return curve, detail


# -- UnlearnDiff --------------------------------------------------------------------------------------------


@contextmanager
def frozen(*modules):
    """Gradients for none of the modules' weights meanwhile (an attack's own tensors still get them)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, wanted in saved:
            parameter.requires_grad_(wanted)


class UnlearnDiffPrefix:
    """A trained attack for the one loop of ``attacks._train``: words prepended to the concept's prompts, kept as
    a continuous copy (the optimiser's) and read as its nearest vocabulary words (by cosine) in every forward
    pass; the gradient at those words reaches the copy straight through the rounding."""

    def __init__(self, pipe, lr: float, tokens: int | None = None, seed: int = 0):
        _refuse_sdxl(pipe, "unlearndiff")
        self.pipe = pipe
        self.vocabulary = word_tokens(pipe.tokenizer)
        embedding = pipe.text_encoder.get_input_embeddings().weight.detach()
        self.table = embedding[self.vocabulary.to(embedding.device)].float()
        self.directions = F.normalize(self.table, dim=-1)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(len(self.vocabulary), (tokens or UNLEARNDIFF_TOKENS,), generator=generator)
        self.vector = torch.nn.Parameter(self.table[start.to(self.table.device)].clone())
        self.optimiser = torch.optim.Adam([self.vector], lr=lr)
        self.keys, self.options = None, None

    def nearest(self) -> torch.Tensor:
        """Indices into the vocabulary of the words the continuous copy reads as."""
        return (F.normalize(self.vector.detach(), dim=-1) @ self.directions.T).argmax(dim=-1)

    def prefix(self) -> str:
        return spelled(self.pipe.tokenizer, self.vocabulary[self.nearest().cpu()])

    def attached(self):
        return frozen(self.pipe.unet, self.pipe.text_encoder)

    def prompts(self, prompts: Sequence[str]) -> list[str]:
        prefix = self.prefix()
        return [f"{prefix} {p}" for p in prompts]

    def states(self, prompts: Sequence[str]) -> torch.Tensor:
        words = self.table[self.nearest()]
        through = self.vector + (words - self.vector).detach()  # the words' values, the copy's gradient
        return text_states(self.pipe, self.prompts(prompts), replace=through.unsqueeze(0))

    def describe(self) -> dict:
        return {"prefix": self.prefix(), "rounding": "nearest vocabulary word by cosine, straight-through gradient"}
