from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from rich.console import Console

from conceptvault.backbone import encode_prompts, load_pipeline, unet_predict
from conceptvault.checkpoint import CHECKPOINT_FILE, KEYS_FILE
from conceptvault.cli.vaults import _concepts_table
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.key import Key, Placement, attach_keys, attached_keys
from conceptvault.latents import CachedLatents, Sampler
from conceptvault.methods.kpop.hide import HideConfig, KeyInit, _initial_tokens, _Probe, hide
from conceptvault.objective import Objective, TextStates
from conceptvault.settings import LossSpace, TrainedLayers
from conceptvault.vault import Vault, save_vault

# A quick configuration: tiny sampler, few updates, no progress bar.
QUICK = HideConfig(model_updates=2, sampler_steps=4, m=3, cache_trajectories=2, checkpoint_every=0)


def quick(**changes) -> HideConfig:
    return dataclasses.replace(QUICK, **changes)


def text_sensitive(pipe):
    """A random tiny UNet barely listens to its prompt; sharpen its cross-attention so that concepts matter."""
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_k.weight" in name or "attn2.to_out.0.weight" in name:
                parameter.mul_(30)
    return pipe


def test_concepts_parse_phrasings():
    concept = Concept.parse("star|five-pointed star| ")
    assert concept.name == "star" and concept.prompts == ["star", "five-pointed star"] and concept.anchor == ""
    assert Concept("heart", ["a heart shape"]).prompts == ["heart", "a heart shape"]
    with pytest.raises(ValueError, match="names no phrasing"):
        Concept.parse(" | ")


def test_config_validates_and_converts_choices():
    config = HideConfig(train="noxattn", loss_space="x0", placement="mid+up", latents="cache")
    assert config.train is TrainedLayers.NOXATTN and config.loss_space is LossSpace.X0
    assert config.to_dict()["placement"] == "mid+up"
    assert HideConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="train must be one of 'xattn', 'noxattn', 'all'; got 'everything'"):
        HideConfig(train="everything")
    with pytest.raises(ValueError, match="lr must be positive; got 0"):
        HideConfig(lr=0)
    with pytest.raises(ValueError, match="lambda_pres must not be negative"):
        HideConfig(lambda_pres=-1.0)
    assert all(f.metadata.get("help") for f in dataclasses.fields(HideConfig))
    made_before_the_unconditional_term = {k: v for k, v in config.to_dict().items() if k != "lambda_uncond"}
    assert HideConfig.from_dict(made_before_the_unconditional_term).lambda_uncond == 0.0
    made_before_the_leak_term = {k: v for k, v in config.to_dict().items() if k != "lambda_leak"}
    assert HideConfig.from_dict(made_before_the_leak_term).lambda_leak == 0.0 and HideConfig().lambda_leak == 1.0
    with pytest.raises(ValueError, match="lambda_leak must not be negative"):
        HideConfig(lambda_leak=-1.0)


def test_the_unconditional_branch_with_the_key_is_held_to_the_original(sd1_path):
    """Guidance gives the key to the empty prompt too; L_uncond_key trains that branch, lambda_uncond=0 does not."""
    config = quick(model_updates=5, lr=3e-4, key_lr=5e-2, latents="cache", key_init="random", placement="all")
    probes = {}
    for weight in (0.0, 1.0):
        pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
        result = hide(pipe, [Concept("star")], dataclasses.replace(config, lambda_uncond=weight), progress=False)
        probes[weight] = result.stats["probe"]
        assert ("L_uncond_key" in result.stats["final"]) == (weight > 0)
    assert probes[1.0]["after"]["L_uncond_key"] < probes[0.0]["after"]["L_uncond_key"], probes


@pytest.mark.parametrize("shape", ["sd1", "sd2"])
def test_a_short_hide_lowers_hiding_and_recovery_losses(shape, sd1_path, sd2_path):
    pipe = text_sensitive(load_pipeline(str({"sd1": sd1_path, "sd2": sd2_path}[shape]), device="cpu"))
    config = quick(model_updates=5, lr=3e-4, key_lr=5e-2, latents="cache", key_init="random", placement="all")
    result = hide(pipe, [Concept("star")], config, progress=False)
    before, after = result.stats["probe"]["before"], result.stats["probe"]["after"]
    assert after["L_hide"] < 0.9 * before["L_hide"], (before, after)
    assert after["L_rec"] < 0.9 * before["L_rec"], (before, after)
    assert result.stats["steps"] == 10 and result.stats["model_updates"] == 5


def test_hide_changes_only_cross_attention_and_keeps_keys_attached(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    before = {name: t.clone() for name, t in pipe.unet.state_dict().items()}
    result = hide(pipe, [Concept("star"), Concept("heart", anchor="a shape")], quick(lr=1e-3), progress=False)
    assert result.public and all(".attn2." in name for name in result.public)
    after = pipe.unet.state_dict()
    changed = {n for n, t in before.items() if not torch.equal(t, after[n])}
    assert changed and changed <= set(result.public)
    assert attached_keys(pipe.unet) == ("star", "heart")
    assert all(p.requires_grad for n, p in pipe.unet.named_parameters() if ".processor." not in n)
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    states = encode_prompts(pipe, ["star"])
    with torch.no_grad():
        plain = pipe.unet(z, t, states).sample
        keyed = pipe.unet(z, t, states, cross_attention_kwargs={"keys": ["star"]}).sample
    assert not torch.equal(plain, keyed)


def test_several_ranked_keys_train_together(sd1_path):
    """With projection changes, each step's key losses switch on the drawn concept's key and a random share of
    the others, so that a holder of several keys gets each concept back; tokens-only keys train alone."""
    names = ["star", "heart", "moon"]

    def keys_per_step(key_rank: int) -> list[list[str]]:
        seen: list[list[str]] = []
        pipe = load_pipeline(str(sd1_path), device="cpu")
        config = quick(model_updates=12, k=1, key_rank=key_rank)
        concepts = [Concept(n) for n in names]
        hide(pipe, concepts, config, progress=False, measure=False, on_step=lambda _, info: seen.append(info["keys"]))
        return seen

    ranked = keys_per_step(2)
    assert len(ranked) == 12 and all(len(set(keys)) == len(keys) and set(keys) <= set(names) for keys in ranked)
    assert {len(keys) for keys in ranked} >= {1, 2} and {keys[0] for keys in ranked} == set(names)
    assert all(len(keys) == 1 for keys in keys_per_step(0))


def test_a_prompts_own_anchor_is_what_it_is_hidden_toward_and_the_vault_records_it(sd1_path, tmp_path):
    def public_after(concept: Concept):
        pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
        result = hide(pipe, [concept], quick(lr=1e-3, latents="sample"), progress=False, measure=False)
        return pipe, result, {name: t.clone() for name, t in result.public.items()}

    pipe, result, own = public_after(Concept("star", anchors={"star": "a circle"}))
    _, _, shared = public_after(Concept("star", anchor="a circle"))
    _, _, empty = public_after(Concept("star"))
    assert all(torch.equal(own[name], shared[name]) for name in own)
    assert any(not torch.equal(own[name], empty[name]) for name in own)
    save_vault(tmp_path / "vault", pipe, result)
    entry = Vault.load(tmp_path / "vault", keys=None).manifest.entry("star")
    assert entry.anchors == {"star": "a circle"} and entry.anchor == ""
    shown = Console(record=True, width=200)
    shown.print(_concepts_table(Vault.load(tmp_path / "vault", keys=None)))  # `inspect` shows one of them
    assert "per prompt: 1, 'star' toward 'a circle'" in shown.export_text()


@pytest.mark.parametrize(
    "changes",
    [
        dict(latents="sample"),
        dict(latents="cache", loss_space="x0"),
        dict(train="noxattn", key_init="random", placement="mid+up", batch_size=2),
    ],
    ids=["sample", "cache-x0", "noxattn"],
)
def test_every_option_runs(tiny_path, changes):
    pipe = load_pipeline(str(tiny_path), device="cpu")
    result = hide(
        pipe, [Concept.parse("star|a five-pointed star")], quick(**changes), preserve=["a circle"], progress=False
    )
    assert all(torch.isfinite(torch.tensor(v)) for v in result.stats["probe"]["after"].values())
    attn2 = [name for name in result.public if ".attn2." in name]
    assert (attn2 == list(result.public)) == (changes.get("train", "xattn") == "xattn")
    assert set(result.stats["final"]) == {"L_hide", "L_rec", "L_uncond_key", "L_pres", "L_pres_key"}


def test_losses_are_compared_in_the_chosen_space(sd2_path):
    pipe = load_pipeline(str(sd2_path), device="cpu")  # v-prediction
    t = torch.tensor([10, 500, 990])
    z0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for space, expected in ((LossSpace.EPSILON, noise), (LossSpace.X0, z0)):
        objective = Objective(pipe.unet, pipe.unet, pipe.scheduler.config, HideConfig(loss_space=space))
        alpha_bar = objective.alphas_cumprod[t].view(-1, 1, 1, 1)
        z = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise
        v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z0
        torch.testing.assert_close(objective._to_loss_space(v, z, t), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_predictions_made_together_are_each_parts_own(family, sd1_path, sdxl_path):
    """One UNet call for the loss terms that share a key: each part's prediction is what it gets alone."""
    pipe = load_pipeline(str(sd1_path if family == "sd1" else sdxl_path), device="cpu")
    texts = TextStates(pipe, ["a star", "a circle", ""])
    attach_keys(pipe.unet, {"star": Key(3, texts.width, init=torch.randn(3, texts.width))}, Placement.ALL)
    objective = Objective(pipe.unet, pipe.unet, pipe.scheduler.config, HideConfig(loss_space="x0"))
    size = pipe.unet.config.sample_size
    z_star, z_circle = torch.randn(2, 4, size, size), torch.randn(3, 4, size, size)
    parts = [(z_star, torch.tensor([10, 700]), texts("a star")), (z_circle, torch.tensor(400), texts("a circle"))]
    parts.append((z_star, torch.tensor([10, 700]), texts("")))
    for keys in (["star"], []):
        with torch.no_grad():
            together = objective.predict_together(parts, keys=keys)
            alone = [objective._predict(pipe.unet, z, t, states, keys) for z, t, states in parts]
        assert [p.shape[0] for p in together] == [2, 3, 2]
        for made_together, made_alone in zip(together, alone, strict=True):
            torch.testing.assert_close(made_together, made_alone, rtol=1e-4, atol=1e-5)
    differs = objective.predict_together(parts[:1], keys=["star"])[0] - objective.predict_together(parts[:1])[0]
    assert differs.abs().max() > 1e-4  # the key is on in the joint call


def test_cached_latents_carry_the_frozen_models_own_predictions(sd2_path):
    """A training step takes the teacher's predictions from the cache: they must be what the UNet gives there."""
    pipe = load_pipeline(str(sd2_path), device="cpu")
    texts = TextStates(pipe, ["a star", ""])
    sampler = Sampler.for_pipeline(pipe, 4, 3.0, texts(""))
    source = CachedLatents(pipe.unet, sampler, texts, ["a star"], 2, torch.Generator().manual_seed(0))
    z, t = source.draw("a star", 3, torch.Generator().manual_seed(1))
    assert set(source.last_teacher) == {"", "a star"}
    with torch.no_grad():
        for prompt, known in source.last_teacher.items():
            torch.testing.assert_close(known, unet_predict(pipe.unet, z, t, texts(prompt).expand(3, -1, -1)))
    latents = source.cache["a star"][0]  # each cached step follows from the one before, as the sampler goes
    torch.testing.assert_close(latents[:, 1], sampler.trajectory(pipe.unet, texts("a star"), latents[:, 0], stop=1)[1])


def test_trajectories_cached_together_are_each_prompts_own(sd1_path, monkeypatch):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    prompts = ["a star", "a circle", "a red square"]
    texts = TextStates(pipe, [*prompts, ""])
    sampler = Sampler.for_pipeline(pipe, 4, 3.0, texts(""))
    together = CachedLatents(pipe.unet, sampler, texts, prompts, 2, torch.Generator().manual_seed(0))
    monkeypatch.setattr(CachedLatents, "TRAJECTORIES_PER_CALL", 2)  # one prompt per sampler batch
    done = []  # what the progress bar is told, batch by batch
    alone = CachedLatents(pipe.unet, sampler, texts, prompts, 2, torch.Generator().manual_seed(0), done.append)
    assert list(together.cache) == prompts and done == [1, 1, 1]
    for prompt in prompts:
        for made_together, made_alone in zip(together.cache[prompt], alone.cache[prompt], strict=True):
            assert made_together.shape == (2, 4, 4, *made_together.shape[-2:])
            torch.testing.assert_close(made_together, made_alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together.cache["a star"][2], together.cache["a circle"][2])


def test_the_cache_progress_on_the_first_of_two_processes_counts_every_prompt_once(sd1_path, monkeypatch):
    import conceptvault.latents as latents

    pipe = load_pipeline(str(sd1_path), device="cpu")
    prompts = ["a star", "a circle", "a red square"]
    texts = TextStates(pipe, [*prompts, ""])
    sampler = Sampler.for_pipeline(pipe, 2, 3.0, texts(""))
    monkeypatch.setattr(CachedLatents, "TRAJECTORIES_PER_CALL", 2)  # one prompt per sampler batch: three batches
    monkeypatch.setattr(latents, "processes", lambda: 2)
    monkeypatch.setattr(latents, "mine", lambda count: range(0, count, 2))  # the first process: batches 0 and 2
    monkeypatch.setattr(latents, "gathered", lambda parts: dict.fromkeys(prompts) | parts)  # the other share: none
    done = []
    CachedLatents(pipe.unet, sampler, texts, prompts, 2, torch.Generator().manual_seed(0), done.append)
    assert done == [2, 1]  # both processes' first batch, then the last one alone: 3 prompts, not 4


def test_the_probe_measures_a_spread_sample_of_the_preserve_prompts(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    preserve = [f"a shape number {i}" for i in range(20)]
    texts = TextStates(pipe, ["star", *preserve, ""])
    sampler = Sampler.for_pipeline(pipe, 4, 3.0, texts(""))
    probe = _Probe(pipe.unet, sampler, texts, [Concept("star")], preserve, seed=0)
    assert probe.preserve == preserve[::3]  # 7 of 20, first to last
    attach_keys(pipe.unet, {"star": Key(4, texts.width, init=torch.randn(4, texts.width))}, Placement.ALL)
    objective = Objective(pipe.unet, copy.deepcopy(pipe.unet), pipe.scheduler.config, quick())
    losses = probe.measure(objective)
    assert set(losses) == {"L_hide", "L_rec", "L_uncond_key", "L_pres", "L_pres_key"}
    assert losses["L_pres"] == 0.0 and losses["L_pres_key"] > 0  # the model is the original; the key changes it


def test_key_starts_from_the_concepts_own_token_states(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    states = encode_prompts(pipe, ["five-pointed star"])[0]  # BOS, five, -, pointed, star, EOS
    tokens = _initial_tokens(pipe, Concept("five-pointed star"), HideConfig(m=10), torch.Generator())
    assert tokens.shape == (10, 768)
    assert torch.equal(tokens[:4], states[1:5]) and torch.equal(tokens[4:8], states[1:5])
    assert torch.equal(tokens[8:], states[1:3])
    noise = _initial_tokens(pipe, Concept("star"), HideConfig(m=4, key_init=KeyInit.RANDOM), torch.Generator())
    assert noise.shape == (4, 768) and not torch.equal(noise[0], noise[1])


@pytest.mark.parametrize("key_rank", [0, 2])
def test_interrupted_and_resumed_equals_straight(key_rank, sd1_path, tmp_path):
    config = quick(model_updates=4, checkpoint_every=3, lr=1e-3, key_lr=1e-3, latents="sample", key_rank=key_rank)
    concepts, preserve = [Concept("star"), Concept("heart")], ["a circle", "a square"]
    straight = hide(load_pipeline(str(sd1_path), device="cpu"), concepts, config, preserve=preserve, progress=False)

    def stop_at_five(step: int, info: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(ConceptVaultError, match="interrupted at step 5 of 8.*`resume`"):
        hide(
            load_pipeline(str(sd1_path), device="cpu"),
            concepts,
            config,
            preserve=preserve,
            progress=False,
            checkpoint_dir=tmp_path,
            on_step=stop_at_five,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_FILE, KEYS_FILE])
    resumed = hide(
        load_pipeline(str(sd1_path), device="cpu"),
        concepts,
        config,
        preserve=preserve,
        progress=False,
        checkpoint_dir=tmp_path,
        resume=True,
    )

    assert straight.public.keys() == resumed.public.keys()
    assert all(torch.equal(straight.public[n], resumed.public[n]) for n in straight.public)
    for name in ("star", "heart"):
        state, resumed_state = straight.keys[name].state_dict(), resumed.keys[name].state_dict()
        assert state.keys() == resumed_state.keys() and (len(state) > 2) == (key_rank > 0)
        assert all(torch.equal(state[n], resumed_state[n]) for n in state)
    assert straight.stats["final"] == resumed.stats["final"]
    assert straight.stats["probe"] == resumed.stats["probe"]


def test_resume_refuses_other_settings_and_missing_checkpoints(sd1_path, tmp_path):
    config = quick(checkpoint_every=1)

    def run(concept: str, settings: HideConfig, folder, resume: bool):
        pipe = load_pipeline(str(sd1_path), device="cpu")
        return hide(pipe, [Concept(concept)], settings, checkpoint_dir=folder, resume=resume, progress=False)

    run("star", config, tmp_path, resume=False)
    with pytest.raises(ConceptVaultError, match=r"made with lr=1e-05, not 0.001"):
        run("star", quick(checkpoint_every=1, lr=1e-3), tmp_path, resume=True)
    with pytest.raises(ConceptVaultError, match="other concepts"):
        run("heart", config, tmp_path, resume=True)
    with pytest.raises(ConceptVaultError, match="no checkpoint to resume from"):
        run("star", config, tmp_path / "none", resume=True)


def test_hide_refuses_bad_inputs(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    with pytest.raises(ConceptVaultError, match="at least one concept"):
        hide(pipe, [], QUICK, progress=False)
    with pytest.raises(ConceptVaultError, match="'star' is given twice"):
        hide(pipe, [Concept("star"), Concept("star")], QUICK, progress=False)
    hide(pipe, [Concept("star")], quick(model_updates=1), progress=False)
    with pytest.raises(ConceptVaultError, match="already has keys attached"):
        hide(pipe, [Concept("heart")], QUICK, progress=False)


def test_hardened_hiding_trains_against_an_attacker_key_and_keeps_only_the_real_one(sd1_path):
    pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
    config = quick(model_updates=4, adversary_every=2, adversary_steps=3, lr=1e-3, key_lr=1e-2)
    result = hide(pipe, [Concept("star")], config, progress=False, measure=False)
    assert attached_keys(pipe.unet) == ("star",) and set(result.keys) == {"star"}
    plain = hide(
        text_sensitive(load_pipeline(str(sd1_path), device="cpu")),
        [Concept("star")],
        quick(model_updates=4, lr=1e-3, key_lr=1e-2),
        progress=False,
        measure=False,
    )
    assert any(not torch.equal(result.public[n], plain.public[n]) for n in plain.public)  # the attacker mattered


def test_the_key_only_phase_leaves_every_public_tensor_bit_identical(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    seen = {}

    def snapshot(step: int, info: dict) -> None:
        if step == QUICK.model_updates * QUICK.k:  # the last model update is done
            seen["public"] = {
                n: p.detach().clone()
                for n, p in pipe.unet.named_parameters()
                if ".attn2." in n and ".processor." not in n
            }

    result = hide(
        pipe, [Concept("star")], quick(key_updates=4, key_lr=1e-2), progress=False, measure=False, on_step=snapshot
    )
    assert result.stats["steps"] == QUICK.model_updates * QUICK.k + 4
    assert result.stats["model_updates"] == QUICK.model_updates  # key-only steps are not model updates
    assert all(torch.equal(seen["public"][n], result.public[n]) for n in result.public)
    key_before_phase = hide(
        load_pipeline(str(sd1_path), device="cpu"), [Concept("star")], QUICK, progress=False, measure=False
    ).keys["star"]
    assert not torch.equal(key_before_phase.p_k, result.keys["star"].p_k)  # the keys kept learning


def test_a_ranked_key_is_trained_and_unlocks_the_saved_vault_as_it_did_the_run(sd1_path, tmp_path):
    pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
    config = quick(key_rank=2, key_change_lr=1e-2, key_lr=1e-2, key_updates=3, placement="all")
    result = hide(pipe, [Concept("star")], config, progress=False)
    ups = [p for n, p in result.keys["star"].changes.named_parameters() if n.endswith("_up")]
    assert result.keys["star"].rank == 2 and all(p.abs().max() > 0 for p in ups)  # trained from zero
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    states = encode_prompts(pipe, ["star"])
    with torch.no_grad():
        in_the_run = unet_predict(pipe.unet, z, t, states, {"keys": ["star"]})
    save_vault(tmp_path / "vault", pipe, result)
    loaded = Vault.load(tmp_path / "vault", keys="all")
    assert loaded.manifest.config["key_rank"] == 2 and loaded.keys["star"].rank == 2
    fresh = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
    loaded.apply(fresh)
    with torch.no_grad():
        torch.testing.assert_close(unet_predict(fresh.unet, z, t, states, {"keys": ["star"]}), in_the_run)


def test_with_lambda_leak_one_concepts_key_changes_another_concepts_prompt_less(sd1_path):
    def leak(lambda_leak: float) -> tuple[float, dict]:
        pipe = text_sensitive(load_pipeline(str(sd1_path), device="cpu"))
        config = quick(model_updates=4, key_updates=24, lr=1e-3, key_lr=3e-2, key_rank=2, lambda_leak=lambda_leak)
        result = hide(pipe, [Concept("star"), Concept("heart")], config, progress=False, measure=False)
        z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        t = torch.full((4,), 500)
        states = encode_prompts(pipe, ["a heart"] * 4)
        with torch.no_grad():
            public = unet_predict(pipe.unet, z, t, states)
            with_star_key = unet_predict(pipe.unet, z, t, states, {"keys": ["star"]})
        return float((with_star_key - public).pow(2).mean()), result.stats

    leaked, plain_stats = leak(0.0)
    held, stats = leak(1.0)
    assert "L_leak" in stats["final"] and "L_leak" not in plain_stats["final"]
    assert held < leaked  # the star's key moves the heart's prediction less when held to the heart's hiding
