"""The distillation erasers: Ablating Concepts (``ac-model``, ``ac-noise``) and safe self-distillation (``sdd``), as
vaults without keys."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.latents import CachedLatents, Sampler
from conceptvault.methods.ac import AcConfig, erase_ac
from conceptvault.methods.sdd import SddConfig, erase_sdd
from conceptvault.objective import Objective, TextStates
from conceptvault.registry import choices, get_method, variant_settings
from conceptvault.vault import Vault

TINY_RUN = ["--iterations", "2", "--set", "sampler_steps=2", "--set", "batch_size=1", "--set", "cache_trajectories=1"]


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def attentive(path):
    """The tiny pipeline, with cross-attention made strong enough that the prompt matters (a random tiny UNet
    barely listens to it), and a frozen copy of it."""
    pipe = load_pipeline(str(path), device="cpu")
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_k.weight" in name or "attn2.to_out.0.weight" in name:
                parameter.mul_(30)
    return pipe, copy.deepcopy(pipe.unet).requires_grad_(False)


def anchor_latents(pipe, frozen, texts: TextStates, anchor: str):
    """Eight ``(z_t, t)`` of the anchor's distribution (two frozen trajectories of a four-step sampler), drawn
    apart from the run's own."""
    sampler = Sampler.for_pipeline(pipe, 4, 3.0, texts(""))
    cache = CachedLatents(frozen, sampler, texts, [anchor], 2, torch.Generator().manual_seed(1))
    return cache.cache[anchor][0].flatten(0, 1), sampler.timesteps.repeat(2)


def gap(objective: Objective, z, t, states, other: torch.Tensor) -> float:
    """How far the trained model's prediction for ``states`` at ``(z, t)`` is from ``other``."""
    with torch.no_grad():
        return float(((objective.predict_together([(z, t, states)])[0] - other) ** 2).mean())


def test_ac_and_sdd_are_registered_with_their_variants():
    assert {"ac-model", "ac-noise", "sdd"} <= set(choices(with_keys=False))
    assert get_method("ac-noise").name == "ac" and variant_settings("ac-noise") == {"target": "noise"}
    assert get_method("ac").config("small").train.value == "xattn" and get_method("sdd").config().ema_decay == 0.999


def test_ac_model_sends_the_concept_to_the_anchor_and_its_regulariser_keeps_the_anchor(sd1_path):
    pipe, frozen = attentive(sd1_path)
    original = copy.deepcopy(pipe.unet.state_dict())
    texts = TextStates(pipe, ["star", "a circle", ""])
    z, t = anchor_latents(pipe, frozen, texts, "a circle")
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, AcConfig())
    anchor = objective.teacher(z, t, texts("a circle"))
    before = gap(objective, z, t, texts("star"), anchor)
    concept_to_anchor, anchor_drift = {}, {}
    for weight in (0.0, 1.0):
        pipe.unet.load_state_dict(original)
        config = AcConfig(iterations=12, lr=2e-4, sampler_steps=4, batch_size=2, cache_trajectories=2)
        result = erase_ac(
            pipe, [Concept("star", anchor="a circle")], replace(config, anchor_weight=weight), progress=False
        )
        concept_to_anchor[weight] = gap(objective, z, t, texts("star"), anchor)
        anchor_drift[weight] = gap(objective, z, t, texts("a circle"), anchor)
    assert max(concept_to_anchor.values()) < 0.6 * before  # the concept now draws as the original draws the anchor
    assert anchor_drift[1.0] < 0.75 * anchor_drift[0.0]  # and the regulariser holds the anchor closer to itself
    changed = {name for name, p in pipe.unet.state_dict().items() if not torch.equal(p, original[name])}
    assert changed == set(result.public) and all(".attn2." in name for name in changed)
    assert result.method == "ac" and result.keys == {} and result.stats["steps"] == 12
    assert set(result.stats["final"]) == {"L_ablate", "L_anchor"}


def test_ac_noise_makes_the_concept_draw_as_the_anchor(sd2_path):
    pipe, frozen = attentive(sd2_path)  # v-prediction: the true noise is converted like every prediction
    texts = TextStates(pipe, ["star", "a circle", ""])
    z, t = anchor_latents(pipe, frozen, texts, "a circle")
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, AcConfig())
    before = gap(objective, z, t, texts("star"), objective.teacher(z, t, texts("a circle")))
    config = AcConfig(iterations=12, lr=3e-4, sampler_steps=4, batch_size=2, cache_trajectories=2, target="noise")
    result = erase_ac(pipe, [Concept("star", anchor="a circle")], config, progress=False)
    anchor_now = objective.predict_together([(z, t, texts("a circle"))])[0].detach()
    assert gap(objective, z, t, texts("star"), anchor_now) < 0.5 * before
    assert all(".attn2." in name for name in result.public) and set(result.stats["final"]) == {"L_ablate"}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_noise_target_is_the_true_noise_in_every_loss_space(prediction_type):
    scheduler = {"prediction_type": prediction_type, "beta_schedule": "scaled_linear", "beta_start": 0.00085}
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    for space in ("epsilon", "x0", "v"):
        objective = Objective(torch.nn.Linear(1, 1), None, scheduler, AcConfig(loss_space=space))
        alpha_bar = objective.alphas_cumprod[t].view(-1, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        expected = {"epsilon": noise, "x0": clean, "v": alpha * noise - sigma * clean}
        target = objective.noise_target(alpha * clean + sigma * noise, t, noise)
        assert torch.allclose(target, expected[space], atol=1e-4), space


def test_ac_noise_needs_the_cached_samples_of_the_anchor():
    with pytest.raises(ValueError, match="target 'noise' .* needs latents 'cache'; got 'sample'"):
        AcConfig(target="noise", latents="sample")
    assert AcConfig(target="model", latents="sample").latents.value == "sample"


def test_sdd_sends_the_concept_to_the_unconditional_prediction(sd1_path):
    pipe, frozen = attentive(sd1_path)
    texts = TextStates(pipe, ["star", "a circle", ""])
    z, t = anchor_latents(pipe, frozen, texts, "star")  # the concept's own trajectories, as the student samples
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, SddConfig())
    unconditional = objective.teacher(z, t, texts(""))
    before = gap(objective, z, t, texts("star"), unconditional)
    original = copy.deepcopy(pipe.unet.state_dict())
    config = SddConfig(iterations=8, lr=1e-3, sampler_steps=4, batch_size=2, ema_decay=0.9)
    result = erase_sdd(pipe, [Concept("star")], config, progress=False)
    unconditional_now = objective.predict_together([(z, t, texts(""))])[0].detach()
    assert gap(objective, z, t, texts("star"), unconditional_now) < 0.5 * before
    changed = {name for name, p in pipe.unet.state_dict().items() if not torch.equal(p, original[name])}
    assert changed == set(result.public) and all(".attn2." in name for name in changed)  # the rest is untouched
    assert result.method == "sdd" and result.keys == {} and set(result.stats["final"]) == {"L_distil"}


def test_sdd_teacher_follows_the_student_and_a_resumed_run_equals_a_straight_one(sd1_path, tmp_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    original = copy.deepcopy(pipe.unet.state_dict())
    config = SddConfig(iterations=6, lr=1e-3, sampler_steps=3, batch_size=2, ema_decay=0.6, checkpoint_every=2)
    students = []

    def keep_student(step: int, info: dict) -> None:
        students.append({n: p.detach().clone() for n, p in pipe.unet.named_parameters() if ".attn2." in n})

    straight = erase_sdd(
        pipe, [Concept("star")], config, checkpoint_dir=tmp_path / "a", progress=False, on_step=keep_student
    )
    teacher = {n: original[n] for n in students[0]}
    for student in students:  # teacher <- 0.6 teacher + 0.4 student, after every step
        teacher = {n: 0.6 * teacher[n] + 0.4 * student[n] for n in teacher}
    saved = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)["teacher"]
    assert saved.keys() == teacher.keys() and all(torch.allclose(saved[n], teacher[n], atol=1e-6) for n in teacher)
    assert not any(torch.equal(saved[n], students[-1][n]) for n in teacher)  # it lags the student

    def stop_at_three(step: int, info: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    pipe.unet.load_state_dict(original)
    with pytest.raises(ConceptVaultError, match="interrupted at step 3 of 6.*`resume`"):
        erase_sdd(
            pipe, [Concept("star")], config, checkpoint_dir=tmp_path / "b", progress=False, on_step=stop_at_three
        )
    pipe.unet.load_state_dict(original)  # as a fresh process would load it
    resumed = erase_sdd(pipe, [Concept("star")], config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert straight.public.keys() == resumed.public.keys()
    assert all(torch.equal(straight.public[n], resumed.public[n]) for n in straight.public)
    assert straight.stats["final"] == resumed.stats["final"] and resumed.stats["steps"] == 6
    resumed_teacher = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)["teacher"]
    assert all(torch.equal(saved[n], resumed_teacher[n]) for n in saved)
    pipe.unet.load_state_dict(original)
    with pytest.raises(ConceptVaultError, match="made with ema_decay=0.6, not 0.9"):
        erase_sdd(pipe, [Concept("star")], replace(config, ema_decay=0.9), checkpoint_dir=tmp_path / "b", resume=True)


@pytest.mark.parametrize(
    "method, setting", [("ac-model", "anchor_weight=nan"), ("ac-noise", "lr=inf"), ("sdd", "ema_decay=-inf")]
)
def test_a_non_finite_setting_is_refused_in_one_line(sd1_path, tmp_path, capsys, method, setting):
    out = tmp_path / "v"
    code, _, err = run(
        capsys, "erase", sd1_path, "--concept", "star", "--method", method, "--set", setting, "--out", out
    )
    assert code == 1 and f"{setting.split('=')[0]} must be a finite number" in err
    assert err.count("\n") == 1 and not out.exists()


def test_erase_inspect_compare_and_attack_end_to_end(sd1_path, tmp_path, capsys):
    vaults = {}
    for method, extra in (("ac-model", ["--set", "anchor_weight=1"]), ("ac-noise", []), ("sdd", [])):
        vaults[method] = tmp_path / method
        args = ["erase", sd1_path, "--concept", "star|pentagram", "--anchor", "star=a circle", "--method", method]
        code, out, err = run(capsys, *args, "--out", vaults[method], *TINY_RUN, *extra)
        assert code == 0, err
        code, out, err = run(capsys, "inspect", vaults[method])
        assert code == 0 and method.split("-")[0] in out and "no key: erased" in out
        vault = Vault.load(vaults[method])
        assert vault.keys == {} and vault.manifest.stats["steps"] == 2
    assert Vault.load(vaults["ac-noise"]).manifest.config["target"] == "noise"

    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)
    code, out, err = run(capsys, "compare", *vaults.values(), "--suite", suite, "--out", tmp_path / "cmp")
    assert code == 0, err
    compared = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["vaults"]
    assert {compared[name]["method"] for name in vaults} == {"ac", "sdd"}

    # an erasure vault is attacked as a control of a hiding vault
    hidden = tmp_path / "hidden"
    quick = ["--model-updates", "1", "--key-updates", "0", "--sampler-steps", "2", "--m", "2"]
    assert run(capsys, "hide", sd1_path, "--concept", "star", "--out", hidden, *quick)[0] == 0
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(pictures / f"{i}.png")
    controls = [part for path in vaults.values() for part in ("--control", path)]
    args = ["attack", hidden, "--suite", suite, "--out", tmp_path / "attack", "--images-from", pictures, *controls]
    code, out, err = run(capsys, *args, "--attack", "finetune", "--steps", "1", "--images", "2", "--size", "1")
    assert code == 0, err
    results = json.loads((tmp_path / "attack" / "attacks.json").read_text())["results"]
    assert {r["model"] for r in results} == {"public", "ac-model (ac)", "ac-noise (ac)", "sdd (sdd)"}
