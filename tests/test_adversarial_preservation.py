"""Adversarial preservation: the search finds where the trained model strays most from the original; ``advpres``
erases while holding that concept; kpop's option adds the same term and, off, changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.adversarial_preservation import AdversarialConcept, vocabulary
from conceptvault.backbone import encode_prompts, load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.latents import Sampler
from conceptvault.methods.advpres import AdvPresConfig, erase_advpres
from conceptvault.methods.esd import EsdConfig, erase_esd
from conceptvault.methods.kpop.hide import HideConfig, hide
from conceptvault.objective import Objective, TextStates
from conceptvault.training import frozen_copy
from conceptvault.vault import Vault

QUICK = AdvPresConfig(iterations=4, lr=1e-3, sampler_steps=2, batch_size=2, adversary_steps=1)
QUICK_HIDE = HideConfig(model_updates=2, sampler_steps=4, m=3, cache_trajectories=2, checkpoint_every=0)
KEPT = ["a circle", "a square", "a red heart"]


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def text_sensitive(pipe):
    """A random tiny UNet barely listens to its prompt; sharpen its cross-attention so that prompts matter."""
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_k.weight" in name or "attn2.to_out.0.weight" in name:
                parameter.mul_(30)
    return pipe


def fixed_latents(pipe, count: int = 4):
    sampler = Sampler.for_pipeline(pipe, count, 3.0, encode_prompts(pipe, [""]))
    z = sampler.noise(count, torch.Generator().manual_seed(0), like=encode_prompts(pipe, [""]))
    return z, sampler.timesteps[torch.arange(count)]


def weights_of(adversarial: AdversarialConcept) -> torch.Tensor:
    return adversarial.weights().detach()


def test_the_vocabulary_is_the_kept_prompts_anchors_and_empty_prompt_never_a_concept():
    concepts = [Concept("star", ["a star"], anchor="a shape"), Concept("heart", anchor="")]
    assert vocabulary(concepts, ["a circle", "a star", "a shape"]) == ["a circle", "a shape", ""]


def test_the_search_raises_the_trained_models_gap_from_the_original_on_fixed_data(sd1_path):
    pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
    frozen = frozen_copy(pipe.unet)
    prompts = [*KEPT, ""]
    texts = TextStates(pipe, prompts)
    direction = torch.randn(texts.width, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an erasure's damage: cross-attention values moved along one direction of the text states
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_v.weight" in name:
                change = torch.randn(parameter.shape[0], 1, generator=generator) * direction
                parameter.add_(parameter.norm(dim=1, keepdim=True) * change)
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, QUICK)
    adversarial = AdversarialConcept(texts, prompts, start="a square", lr=0.3)
    z, t = fixed_latents(pipe)
    assert list(adversarial.strongest(1)) == ["a square"] and weights_of(adversarial)[1] > 0.88  # a kept prompt
    with torch.no_grad():
        before = float(objective.gap(z, t, adversarial.states()))
        each = [float(objective.gap(z, t, texts(prompt))) for prompt in prompts]
    pipe.unet.requires_grad_(True)  # as the eraser's weights are while it trains

    adversarial.search(objective, z, t, steps=8)

    with torch.no_grad():
        after = float(objective.gap(z, t, adversarial.states()))
    assert after > 1.1 * before and after > max(each)  # more hurt than any single prompt of the vocabulary
    weights = weights_of(adversarial)
    assert abs(float(weights.sum()) - 1) < 1e-6 and weights[1] < 0.8  # still a mix of real prompts, moved
    mix = torch.einsum("k,kld->ld", weights, torch.cat([texts(p) for p in prompts]))
    assert torch.allclose(adversarial.states()[0], mix, atol=1e-5)
    assert all(p.grad is None for p in pipe.unet.parameters())  # the search leaves the eraser's gradients alone


def test_advpres_is_esd_plus_its_term_and_moves_the_concept_on_fixed_latents(sd1_path):
    """Without its term it trains as ESD does (the search draws no random numbers and moves no weight); with it,
    it still moves the concept toward its negative-guidance target."""
    pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
    objective = Objective(pipe.unet, frozen_copy(pipe.unet), pipe.scheduler.config, QUICK)
    states = encode_prompts(pipe, ["star", ""])
    z, t = fixed_latents(pipe)
    with torch.no_grad():
        before = float(objective.hide(z, t, states[:1], states[1:]))
    config = replace(QUICK, iterations=8, lr=3e-3, adversary_steps=1)
    esd_config = EsdConfig(**{n: getattr(config, n) for n in ("iterations", "lr", "sampler_steps", "batch_size")})
    esd = erase_esd(text_sensitive(load_pipeline(str(sd1_path), device="cpu")), [Concept("star")], esd_config,
                    progress=False).public  # fmt: skip
    unheld = erase_advpres(text_sensitive(load_pipeline(str(sd1_path), device="cpu")), [Concept("star")],
                           replace(config, lambda_pres=0.0), preserve=KEPT, progress=False).public  # fmt: skip
    held = erase_advpres(pipe, [Concept("star")], config, preserve=KEPT, progress=False)

    assert esd.keys() == unheld.keys() == held.public.keys()
    assert all(torch.equal(esd[n], unheld[n]) for n in unheld)
    assert max(float((held.public[n] - unheld[n]).abs().max()) for n in unheld) > 1e-4
    with torch.no_grad():
        after = float(objective.hide(z, t, states[:1], states[1:]))
    assert after < 0.8 * before
    assert set(held.stats["adversarial_concept"]) <= {*KEPT, ""} and "L_adv" in held.stats["final"]


def test_advpres_and_kpop_with_the_option_erase_hide_inspect_compare_attack_end_to_end(sd1_path, tmp_path, capsys):
    erased, hidden = tmp_path / "advpres", tmp_path / "kpop"
    quick = ["--iterations", "2", "--set", "sampler_steps=2", "--set", "adversary_steps=1"]
    code, _, err = run(capsys, "erase", sd1_path, "--concept", "star|pentagram", "--method", "advpres",
                       "--out", erased, "--preserve", "a circle", "--preserve", "a square", *quick)  # fmt: skip
    assert code == 0, err
    loaded = Vault.load(erased)
    assert loaded.keys == {} and loaded.method.name == "advpres" and loaded.manifest.preserve == KEPT[:2]
    assert set(loaded.manifest.stats["adversarial_concept"]) <= {"a circle", "a square", ""}
    code, out, _ = run(capsys, "inspect", erased)
    assert code == 0 and "advpres" in out and "no key: erased" in out

    quick = ["--model-updates", "2", "--key-updates", "0", "--sampler-steps", "2", "--m", "2"]
    option = ["--adversarial-preserve", "1.5", "--adversarial-preserve-steps", "1"]
    code, _, err = run(capsys, "hide", sd1_path, "--concept", "star", "--preserve", "a circle", "--out", hidden,
                       *quick, *option)  # fmt: skip
    assert code == 0, err
    loaded = Vault.load(hidden, keys="all")
    assert list(loaded.keys) == ["star"] and loaded.manifest.config["adversarial_preserve"] == 1.5
    assert "L_adv" in loaded.manifest.stats["final"]
    assert set(loaded.manifest.stats["adversarial_concept"]) <= {"a circle", ""}

    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)
    code, _, err = run(capsys, "compare", hidden, erased, "--suite", suite, "--out", tmp_path / "cmp")
    assert code == 0, err
    compared = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["vaults"]
    assert compared["advpres"]["method"] == "advpres" and "rsr" not in compared["advpres"]
    assert compared["kpop"]["method"] == "kpop" and "rsr" in compared["kpop"]

    pictures = tmp_path / "pictures"  # an erasure vault is attacked as a control beside a hiding vault
    pictures.mkdir()
    Image.new("RGB", (32, 32), (200, 200, 90)).save(pictures / "0.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a starr\n")
    attack = ["--size", "1", "--images", "1", "--images-from", pictures, "--prompts", prompts, "--attack", "prompt"]
    attack += ["--control", erased]
    code, _, err = run(capsys, "attack", hidden, "--suite", suite, "--out", tmp_path / "attack", *attack)
    assert code == 0, err
    attacked = json.loads((tmp_path / "attack" / "attacks.json").read_text())
    assert {(r["attack"], r["model"]) for r in attacked["results"]} == {
        ("prompt", "public"),
        ("prompt", "advpres (advpres)"),
    }


def test_advpres_interrupted_and_resumed_equals_straight(sd1_path, tmp_path):
    config = replace(QUICK, checkpoint_every=2)
    straight = erase_advpres(load_pipeline(str(sd1_path), device="cpu"), [Concept("star")], config, preserve=KEPT,
                             progress=False)  # fmt: skip

    def stop_at_three(step: int, info: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(ConceptVaultError, match="interrupted at step 3 of 4.*`resume`"):
        pipe = load_pipeline(str(sd1_path), device="cpu")
        erase_advpres(pipe, [Concept("star")], config, preserve=KEPT, checkpoint_dir=tmp_path, progress=False,
                      on_step=stop_at_three)  # fmt: skip
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["adversarial"]
    assert saved["logits"].shape == (len(vocabulary([Concept("star")], KEPT)),) and saved["optimiser"]["state"]
    pipe = load_pipeline(str(sd1_path), device="cpu")
    resumed = erase_advpres(
        pipe, [Concept("star")], config, preserve=KEPT, checkpoint_dir=tmp_path, resume=True, progress=False
    )

    assert straight.public.keys() == resumed.public.keys()
    assert all(torch.equal(straight.public[n], resumed.public[n]) for n in straight.public)
    assert straight.stats["final"] == resumed.stats["final"] and resumed.stats["steps"] == 4
    assert straight.stats["adversarial_concept"] == resumed.stats["adversarial_concept"]
    with pytest.raises(ConceptVaultError, match="made with adversary_steps=1, not 2"):
        pipe = load_pipeline(str(sd1_path), device="cpu")
        erase_advpres(pipe, [Concept("star")], replace(config, adversary_steps=2), preserve=KEPT,
                      checkpoint_dir=tmp_path, resume=True)  # fmt: skip


def test_kpop_with_the_option_off_equals_the_default(sd1_path):
    def hidden(config: HideConfig):
        pipe = load_pipeline(str(sd1_path), device="cpu")
        result = hide(pipe, [Concept("star")], config, preserve=["a circle"], progress=False, measure=False)
        return result.public, {k: v.detach().clone() for k, v in result.keys["star"].state_dict().items()}

    default = hidden(QUICK_HIDE)
    off = hidden(replace(QUICK_HIDE, adversarial_preserve=0.0, adversarial_preserve_steps=5))
    for part in (0, 1):
        assert all(torch.equal(default[part][n], off[part][n]) for n in default[part])


def test_a_non_finite_setting_is_refused_in_one_line(sd1_path, tmp_path, capsys):
    with pytest.raises(ValueError, match="adversary_lr must be a finite number"):
        AdvPresConfig(adversary_lr=float("inf"))
    erase = ["erase", sd1_path, "--concept", "star", "--method", "advpres", "--out", tmp_path / "erased"]
    code, _, err = run(capsys, *erase, "--set", "lambda_pres=nan")
    assert code == 1 and "lambda_pres must be a finite number" in err and err.count("\n") == 1
    hide_ = ["hide", sd1_path, "--concept", "star", "--out", tmp_path / "hidden"]
    code, _, err = run(capsys, *hide_, "--adversarial-preserve", "inf")
    assert code == 1 and "adversarial_preserve must be a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "erased").exists() and not (tmp_path / "hidden").exists()
