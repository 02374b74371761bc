"""Two erasers that work on cross-attention: Forget-Me-Not (attention re-steering) and Receler (low-rank erasers
after cross-attention, trained against adversarial soft tokens, folded into the output projections)."""

from __future__ import annotations

import copy
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import encode_prompts, load_pipeline, unet_predict
from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.latents import Sampler
from conceptvault.methods.fmn import FmnConfig, concept_attention, concept_positions, erase_fmn
from conceptvault.methods.receler import RecelerConfig, erase_receler
from conceptvault.objective import Objective
from conceptvault.training import concept_tokens
from conceptvault.vault import Vault, save_vault
from tiny_models import TOKENIZER_DIR

QUICK = {
    "fmn": lambda **more: FmnConfig(**{**dict(iterations=4, lr=1e-3, sampler_steps=2, batch_size=1), **more}),
    "receler": lambda **more: RecelerConfig(
        **{**dict(iterations=4, lr=1e-3, sampler_steps=2, batch_size=1, rank=2, adversary_steps=1), **more}
    ),
}
ERASE = {"fmn": erase_fmn, "receler": erase_receler}


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def original(sd1_path):
    """The tiny SD 1.x pipeline, loaded once; tests take :func:`fresh` copies of it and never change it."""
    return load_pipeline(str(sd1_path), device="cpu")


def fresh(pipe):
    """A pipeline that shares ``pipe``'s text encoder, VAE and tokenizer (no method changes them) and has its own
    copy of the UNet: a freshly loaded model, at a fraction of the cost of loading one."""
    copied = type(pipe)(**{**pipe.components, "unet": copy.deepcopy(pipe.unet)})
    copied.set_progress_bar_config(disable=True)
    return copied


def fixed_latents(pipe, count: int = 4):
    """Seeded noise at the sampler's first ``count`` timesteps (the concept's loss is measured there)."""
    empty = encode_prompts(pipe, [""])
    sampler = Sampler.for_pipeline(pipe, count, 3.0, empty)
    return sampler.noise(count, torch.Generator().manual_seed(0), like=empty), sampler.timesteps[:count]


def test_fmn_finds_the_concept_s_tokens_in_each_phrasing():
    pipe = SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR))
    assert concept_positions(pipe, "star", "a red star on grass") == [3]
    assert concept_positions(pipe, "five-pointed star", "a five-pointed star") == [2, 3, 4, 5]
    assert concept_positions(pipe, "star", "a big shape") == [3]  # no name: the last content token


def test_fmn_steers_attention_off_the_concept_and_changes_nothing_else(original):
    pipe = fresh(original)
    processors = pipe.unet.attn_processors
    before = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    z, t = fixed_latents(pipe)
    star = encode_prompts(pipe, ["a star"])
    positions = concept_positions(pipe, "star", "a star")
    with torch.no_grad():
        attention_before = float(concept_attention(pipe.unet, z, t, star, positions))

    result = erase_fmn(pipe, [Concept("star", ["a star"])], QUICK["fmn"](iterations=10), progress=False)

    with torch.no_grad():
        attention_after = float(concept_attention(pipe.unet, z, t, star, positions))
    assert attention_after < 0.5 * attention_before
    assert result.public and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in result.public)
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before if n not in result.public)
    assert all(not torch.equal(before[n], after[n]) for n in result.public if n.endswith("to_k.weight"))
    assert all(processors[name] is p for name, p in pipe.unet.attn_processors.items())  # the recorders are gone
    assert result.keys == {} and result.method == "fmn" and result.stats["steps"] == 10


def test_receler_lowers_the_erasing_loss_and_changes_only_the_output_projections(original):
    pipe = fresh(original)
    with torch.no_grad():  # a random tiny UNet barely listens to prompts; make the concept matter (as for ESD)
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_k.weight" in name or "attn2.to_out.0.weight" in name:
                parameter.mul_(30)
    frozen = copy.deepcopy(pipe.unet)
    before = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    z, t = fixed_latents(pipe)
    states = encode_prompts(pipe, ["star", ""])
    config = QUICK["receler"](iterations=8, lr=1e-2, rank=4, sampler_steps=2)
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, config)
    with torch.no_grad():
        loss_before = float(objective.hide(z, t, states[:1], states[1:]))

    result = erase_receler(pipe, [Concept("star")], config, progress=False)

    with torch.no_grad():  # the folded model: no eraser is attached any more
        loss_after = float(objective.hide(z, t, states[:1], states[1:]))
    assert loss_after < 0.8 * loss_before
    assert result.public and all(n.split("attn2.")[-1] in ("to_out.0.weight", "to_out.0.bias") for n in result.public)
    assert len(result.public) == 2 * sum(name.endswith("attn2") for name, _ in pipe.unet.named_modules())
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before if n not in result.public)
    assert not any(module._forward_hooks for module in pipe.unet.modules())
    assert {"L_erase", "L_erase_adv", "L_adversary"} <= set(result.stats["final"])


def test_the_folded_receler_vault_computes_what_the_erasers_did(original, tmp_path):
    pipe = fresh(original)
    z, t = fixed_latents(pipe, 2)
    star = encode_prompts(pipe, ["a star"]).expand(2, -1, -1)
    with_erasers = {}

    def at_the_last_step(step: int, info: dict) -> None:
        if step == 2:  # the erasers are still attached while the run reports its steps
            with torch.no_grad():
                with_erasers["prediction"] = unet_predict(pipe.unet, z, t, star)

    result = erase_receler(
        pipe, [Concept("star")], QUICK["receler"](iterations=2), progress=False, on_step=at_the_last_step
    )
    save_vault(tmp_path / "v", pipe, result)

    applied = fresh(original)
    with torch.no_grad():
        before = unet_predict(applied.unet, z, t, star)
        Vault.load(tmp_path / "v").apply(applied)
        folded = unet_predict(applied.unet, z, t, star)
    assert not torch.allclose(with_erasers["prediction"], before, atol=1e-4)  # the erasers did change it
    torch.testing.assert_close(folded, with_erasers["prediction"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["fmn", "receler"])
def test_interrupted_and_resumed_equals_straight(original, tmp_path, method):
    config = QUICK[method](checkpoint_every=2)
    erase = ERASE[method]
    straight = erase(fresh(original), [Concept("star")], config, progress=False)

    def stop_at_three(step: int, info: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    pipe = fresh(original)
    with pytest.raises(ConceptVaultError, match="interrupted at step 3 of 4.*`resume`"):
        erase(pipe, [Concept("star")], config, checkpoint_dir=tmp_path, progress=False, on_step=stop_at_three)
    assert not any(module._forward_hooks for module in pipe.unet.modules())  # an interrupted run leaves no eraser
    saved = torch.load(io.BytesIO((tmp_path / CHECKPOINT_FILE).read_bytes()), weights_only=True)
    if method == "receler":  # the adversary's tokens and optimiser are part of what resumes
        start = concept_tokens(pipe, "star", config.adversary_tokens)
        assert saved["adversaries"]["star"].shape == start.shape
        assert not torch.equal(saved["adversaries"]["star"], start) and saved["adversary_optimiser"]["state"]
    resumed = erase(fresh(original), [Concept("star")], config, checkpoint_dir=tmp_path, resume=True, progress=False)

    assert straight.public.keys() == resumed.public.keys()
    assert all(torch.equal(straight.public[n], resumed.public[n]) for n in straight.public)
    assert straight.stats["final"] == resumed.stats["final"] and resumed.stats["steps"] == 4


def pictures(folder, count: int):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_both_erasers_through_inspect_compare_and_attack(sd1_path, tmp_path, capsys):
    quick = ["--iterations", "2", "--set", "sampler_steps=2", "--set", "batch_size=1"]
    for method in ("fmn", "receler"):
        code, out, err = run(capsys, "erase", sd1_path, "--concept", "star|pentagram", "--method", method,
                             "--out", tmp_path / method, *quick)  # fmt: skip
        assert code == 0, err
        code, out, err = run(capsys, "inspect", tmp_path / method)
        assert code == 0 and method in out and "no key: erased" in out
    hidden = tmp_path / "hidden"  # an erasure vault is attacked as a control beside a hiding vault
    code, _, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", hidden, "--model-updates", "1",
                       "--key-updates", "0", "--sampler-steps", "2", "--m", "2")  # fmt: skip
    assert code == 0, err

    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)
    code, out, err = run(capsys, "compare", tmp_path / "fmn", tmp_path / "receler", "--suite", suite,
                         "--out", tmp_path / "cmp")  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {name: v["method"] for name, v in data["vaults"].items()} == {"fmn": "fmn", "receler": "receler"}

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a starr\n")
    code, out, err = run(capsys, "attack", hidden, "--suite", suite, "--out", tmp_path / "attack", "--size", "1",
                         "--images", "1", "--images-from", pictures(tmp_path / "pictures", 1),
                         "--prompts", prompts, "--attack", "prompt",
                         "--control", tmp_path / "fmn", "--control", tmp_path / "receler")  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "attack" / "attacks.json").read_text())
    attacked = {(r["attack"], r["model"]) for r in data["results"]}
    assert attacked == {("prompt", model) for model in ("public", "fmn (fmn)", "receler (receler)")}


@pytest.mark.parametrize(
    ("method", "setting"), [("fmn", "lr=nan"), ("receler", "adversary_lr=inf"), ("receler", "lambda_adversary=nan")]
)
def test_a_non_finite_setting_is_refused_in_one_line(sd1_path, tmp_path, capsys, method, setting):
    code, _, err = run(capsys, "erase", sd1_path, "--concept", "star", "--method", method, "--set", setting,
                       "--out", tmp_path / "bad")  # fmt: skip
    assert code == 1 and f"{setting.split('=')[0]} must be a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
