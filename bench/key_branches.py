"""Where a key falls short: per sampler step, how far each guidance branch with the key is from the original's.

    python bench/key_branches.py VAULT [--kind shape] [--concept star] [--prompts 8]

Classifier-free guidance gives the key to both branches, so a key holder's step is
``u_k + g (c_k - u_k)``: the conditional prediction with the key (``c_k``) and the unconditional one
(``u_k``, the empty prompt with the key). Along the original model's own trajectories of the concept's
suite prompts, this prints per timestep the mean squared distance to the original model of the public
model's conditional prediction, of ``c_k``, of ``u_k``, and of the guided step with the key; a key
that brings the concept back keeps the last small where the shape is decided (high noise).
"""

from __future__ import annotations

import argparse
import copy

import torch

from conceptvault.backbone import BUILTIN, load_pipeline, unet_predict
from conceptvault.evaluate.world_suites import world_concept
from conceptvault.latents import Sampler
from conceptvault.objective import TextStates
from conceptvault.vault import Vault
from conceptvault.world import GUIDANCE, SAMPLE_STEPS
from conceptvault.world.vocabulary import VOCABULARY


def branch_errors(pipe, original, key: str, prompts: list[str], seed: int = 0) -> dict[int, dict[str, float]]:
    """Per timestep, the mean squared distance of each branch to the original's (see the module's text)."""
    texts = TextStates(pipe, [*prompts, ""])
    sampler = Sampler.for_pipeline(pipe, SAMPLE_STEPS, GUIDANCE, texts(""))
    states = torch.cat([texts(prompt) for prompt in prompts])
    empty = texts("").expand(len(prompts), -1, -1)
    noise = sampler.noise(len(prompts), torch.Generator().manual_seed(seed), like=states)
    rows: dict[int, dict[str, float]] = {}
    for z, t in zip(sampler.trajectory(original, states, noise), sampler.timesteps, strict=True):
        with torch.no_grad():
            c, u = unet_predict(original, z, t, states), unet_predict(original, z, t, empty)
            c_key = unet_predict(pipe.unet, z, t, states, {"keys": [key]})
            u_key = unet_predict(pipe.unet, z, t, empty, {"keys": [key]})
            public = unet_predict(pipe.unet, z, t, states)
        errors = {
            "public c": public - c,
            "c_k": c_key - c,
            "u_k": u_key - u,
            "guided with key": u_key + GUIDANCE * (c_key - u_key) - (u + GUIDANCE * (c - u)),
        }
        rows[int(t)] = {name: float(error.pow(2).mean()) for name, error in errors.items()}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vault")
    parser.add_argument("--kind", default="shape", choices=list(VOCABULARY), help="what kind of concept is hidden")
    parser.add_argument("--concept", default="star", help="the shape, colour or style hidden (its key's name)")
    parser.add_argument("--prompts", type=int, default=8, help="suite prompts of the concept (seeds 0..)")
    args = parser.parse_args()
    if args.concept not in VOCABULARY[args.kind]:
        parser.error(f"{args.concept!r} is not a {args.kind}; one of {', '.join(VOCABULARY[args.kind])}")
    torch.set_num_threads(2)
    pipe = load_pipeline(BUILTIN, device="cpu")
    original = copy.deepcopy(pipe.unet).eval()
    Vault.load(args.vault, keys="all").apply(pipe)
    prompts = world_concept(args.kind, args.concept, args.prompts).prompts
    rows = branch_errors(pipe, original, args.concept, prompts)
    names = list(next(iter(rows.values())))
    print("| t | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for t, row in rows.items():
        print(f"| {t} | " + " | ".join(f"{row[name]:.1e}" for name in names) + " |")


if __name__ == "__main__":
    main()
