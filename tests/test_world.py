"""The built-in Shapes world: renderer, captions, the shipped model and judge, and the trainer."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from conceptvault.backbone import load_pipeline
from conceptvault.errors import ConceptVaultError
from conceptvault.world import BUILTIN_MODEL_DIR, COLOURS, SHAPES, STYLES
from conceptvault.world.captions import articles_fixed, training_caption, without_words, words_replaced
from conceptvault.world.data import render_batch
from conceptvault.world.judge import JUDGE_TURNS, REJECT, judge_accuracy, load_judge
from conceptvault.world.model import build_vae
from conceptvault.world.negatives import NEGATIVE_KINDS, render_negative
from conceptvault.world.render import MAX_TURN, render, sample_scene, to_pil
from conceptvault.world.train import DenoiserRun, LatentPool, WorldTrainConfig, train_denoiser, train_world


def test_vocabulary_has_the_promised_breadth():
    assert len(SHAPES) >= 10 and len(COLOURS) >= 6 and len(STYLES) >= 4
    for names in (*SHAPES.values(), *COLOURS.values(), *STYLES.values()):
        assert len(names) >= 2


def test_rendering_is_deterministic_from_a_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return render(sample_scene(rng), rng)

    assert np.array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))
    assert draw(7).shape == (64, 64, 3)


def test_scenes_vary_in_size_position_rotation_and_background():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(50)]
    for attribute in ("radius", "centre", "angle", "background", "shape", "colour", "style"):
        assert len({getattr(s, attribute) for s in scenes}) > 3, attribute


def test_the_world_turns_shapes_by_at_most_max_turn_unless_asked():
    rng = np.random.default_rng(1)
    assert max(abs(sample_scene(rng, "square").angle) for _ in range(200)) <= MAX_TURN
    assert max(abs(sample_scene(rng, "square", turns=JUDGE_TURNS).angle) for _ in range(200)) > MAX_TURN
    assert max(abs(sample_scene(rng, "star", turns=JUDGE_TURNS).angle) for _ in range(200)) <= MAX_TURN


def test_captions_use_synonyms_and_sometimes_leave_words_out():
    rng = np.random.default_rng(0)
    captions = [training_caption("star", "red", "striped", rng) for _ in range(400)]
    for word in ("pentagram", "five-pointed star", "crimson", "scarlet", "stripy"):
        assert any(word in c for c in captions), word
    named_colour = [any(name in c for name in COLOURS["red"]) for c in captions]
    named_style = [any(name in c for name in STYLES["striped"]) for c in captions]
    assert 0.6 < np.mean(named_colour) < 0.9
    assert 0.45 < np.mean(named_style) < 0.75


def test_words_taken_out_of_or_replaced_in_a_caption_leave_a_tidy_caption():
    assert without_words("a picture of an outlined crimson hexagon", ["crimson"]) == "a picture of an outlined hexagon"
    assert without_words("a picture of an outlined hexagon", ["outlined"]) == "a picture of a hexagon"
    assert without_words("a scarlet arrow, striped", ["scarlet", "striped"]) == "an arrow"
    assert without_words("red", ["red"]) == "" and without_words("a reddish disc", ["red"]) == "a reddish disc"
    assert words_replaced("a crimson arrow, striped", ["crimson"], "orange") == "an orange arrow, striped"
    assert words_replaced("red", ["red"], "blue") == "blue"
    assert words_replaced("a reddish disc", ["red"], "blue") == "a reddish disc"
    assert words_replaced("a five-pointed star", ["star", "five-pointed star"], "circle") == "a circle"
    assert articles_fixed("a arrow and an box") == "an arrow and a box"


def test_shipped_pipeline_loads_with_plain_diffusers_and_makes_64px_images():
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, safety_checker=None)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    image = pipe("a red star", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_shipped_judge_reads_rendered_images_and_rejects_shapeless_ones():
    accuracy = judge_accuracy(load_judge(), count=400, seed=2024)
    assert accuracy["shape"] >= 0.99
    assert accuracy["colour"] >= 0.99
    assert accuracy["style"] >= 0.97
    assert accuracy["false_accept"] <= 0.02


def test_the_judge_rejects_every_kind_of_negative_and_accepts_renders():
    judge = load_judge()
    rng = np.random.default_rng(5)
    negatives = {kind: [to_pil(render_negative(rng, kind)) for _ in range(20)] for kind in NEGATIVE_KINDS}
    rejected = {
        kind: sum(judge.labels["shape"][i] == REJECT for i in judge.predict(images)["shape"].argmax(-1).tolist())
        for kind, images in negatives.items()
    }
    assert sum(rejected.values()) >= 155 and min(rejected.values()) >= 17, rejected
    renders = [to_pil(render(sample_scene(rng), rng)) for _ in range(40)]
    accepted = sum(judge.labels["shape"][i] != REJECT for i in judge.predict(renders)["shape"].argmax(-1).tolist())
    assert accepted == 40
    probs = judge.predict(renders)
    for head in ("shape", "colour", "style"):
        assert judge.labels[head][-1] == REJECT
        assert torch.allclose(probs[head].sum(-1), torch.ones(40), atol=1e-5)


def test_the_judge_names_a_square_turned_further_than_the_world_draws_a_square():
    """The model sometimes turns a square by 40 degrees; the judge still calls it a square."""
    judge = load_judge()
    rng = np.random.default_rng(6)
    scenes = [sample_scene(rng, "square") for _ in range(40)]
    turned = [to_pil(render(dataclasses.replace(s, angle=rng.uniform(MAX_TURN, math.pi / 4)), rng)) for s in scenes]
    named = [judge.labels["shape"][i] for i in judge.predict(turned)["shape"].argmax(-1).tolist()]
    assert named.count("square") >= 38, named


def test_shipped_model_draws_the_shape_it_is_asked_for():
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    shapes = ["circle", "star", "arrow"]
    prompts = [f"a {shape}" for shape in shapes for _ in range(4)]

    def sample():
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return pipe(prompts, num_inference_steps=25, guidance_scale=3.0, generator=generators).images

    images = sample()
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, sample(), strict=False))
    judge = load_judge()
    predicted = [judge.labels["shape"][i] for i in judge.predict(images)["shape"].argmax(-1).tolist()]
    correct = sum(p == prompt.split()[-1] for p, prompt in zip(predicted, prompts, strict=False))
    assert correct >= 10, predicted


def test_the_never_trained_control_draws_the_kept_shapes_and_no_star():
    """Its UNet and text encoder were trained together: with the built-in model's text encoder it drew other shapes."""
    pipe = load_pipeline("builtin-without-star", device="cpu")
    prompts = [f"a {shape}" for shape in ("circle", "square", "heart", "star") for _ in range(4)]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=25, guidance_scale=3.0, generator=generators).images
    judge = load_judge()
    predicted = [judge.labels["shape"][i] for i in judge.predict(images)["shape"].argmax(-1).tolist()]
    asked = [prompt.split()[-1] for prompt in prompts]
    assert sum(p == a for p, a in zip(predicted, asked, strict=True) if a != "star") >= 10, predicted
    assert predicted.count("star") <= 1, predicted


def test_trainer_runs_each_part_for_a_few_steps_and_continues(tmp_path):
    torch.manual_seed(0)
    config = WorldTrainConfig(
        judge_steps=2, vae_steps=2, decoder_steps=2, denoiser_steps=2, batch_size=4, latent_pool=8, held_out=16
    )
    report = train_world(tmp_path, config, BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)
    assert set(report["judge_accuracy"]) == {"shape", "colour", "style", "false_accept"}
    assert report["denoiser_steps_done"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model", safety_checker=None)
    image = pipe("a square", num_inference_steps=2).images[0]
    assert image.size == (64, 64)
    assert load_judge(tmp_path / "judge").predict([image])["shape"].shape == (1, 11)

    longer = dataclasses.replace(config, denoiser_steps=3)
    assert (
        train_world(tmp_path, longer, BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)["denoiser_steps_done"] == 3
    )
    with pytest.raises(ConceptVaultError, match="other settings \\(lr\\)"):
        train_world(tmp_path, dataclasses.replace(longer, lr=0.5), BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)


def test_training_continues_from_a_model_folder(tmp_path):
    """How the shipped model is trained further: --init-from its folder, no VAE or judge steps."""
    config = WorldTrainConfig(
        init_from=str(BUILTIN_MODEL_DIR),
        vae_steps=0,
        decoder_steps=0,
        judge_steps=0,
        denoiser_steps=1,
        lr=1e-7,
        batch_size=2,
        latent_pool=8,
        held_out=8,
    )
    train_world(tmp_path, config, BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)
    shipped = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, safety_checker=None)
    continued = StableDiffusionPipeline.from_pretrained(tmp_path / "model", safety_checker=None)
    for name in ("vae", "unet", "text_encoder"):
        pairs = zip(getattr(shipped, name).parameters(), getattr(continued, name).parameters(), strict=True)
        largest = max((a - b).abs().max().item() for a, b in pairs)
        assert largest < 1e-4, (name, largest)  # one step at lr 1e-7: the shipped weights, barely moved


def test_a_run_without_denoiser_steps_trains_a_judge_for_a_given_vae(tmp_path):
    """How the shipped judge is retrained: the model's VAE as it is, the judge, no pool and no model."""
    config = WorldTrainConfig(
        vae_from=str(BUILTIN_MODEL_DIR), decoder_steps=0, judge_steps=2, denoiser_steps=0, batch_size=4, held_out=8
    )
    report = train_world(tmp_path, config, BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)
    assert set(report["judge_accuracy"]) == {"shape", "colour", "style", "false_accept"}
    assert (tmp_path / "judge").is_dir() and (tmp_path / "vae").is_dir()
    assert not (tmp_path / "model").exists() and not (tmp_path / "latent-pool.pt").exists()


def test_a_wrong_init_folder_is_one_error_and_writes_nothing(tmp_path):
    config = WorldTrainConfig(init_from=str(tmp_path / "missing"), denoiser_steps=1)
    with pytest.raises(ConceptVaultError, match="--init-from .* is not a diffusers pipeline folder"):
        train_world(tmp_path / "run", config, BUILTIN_MODEL_DIR / "tokenizer", log=lambda _: None)
    assert not (tmp_path / "run").exists()  # so the corrected command is not refused as another run


def test_a_resumed_denoiser_run_equals_a_straight_one(tmp_path):
    config = WorldTrainConfig(denoiser_steps=4, batch_size=2, latent_pool=8)
    vae = build_vae().eval()
    vae.register_to_config(scaling_factor=1.0)
    pool = LatentPool.build(vae, config.latent_pool, seed=0)
    tokenizer = CLIPTokenizer.from_pretrained(BUILTIN_MODEL_DIR / "tokenizer")
    straight = train_denoiser(DenoiserRun(config, torch.device("cpu")), pool, tokenizer)
    first = train_denoiser(
        DenoiserRun(dataclasses.replace(config, denoiser_steps=2), torch.device("cpu")), pool, tokenizer
    )
    saved = first.state_dict()
    resumed = DenoiserRun(config, torch.device("cpu"))
    resumed.load_state_dict(saved)
    train_denoiser(resumed, pool, tokenizer)
    for a, b in zip(straight.ema_unet.parameters(), resumed.ema_unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_batches_carry_labels_matching_their_captions():
    batch = render_batch(np.random.default_rng(3), 16)
    assert batch.images.shape == (16, 3, 64, 64)
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    for i, text in enumerate(batch.captions):
        shape = list(SHAPES)[batch.labels["shape"][i]]
        assert any(name in text for name in SHAPES[shape]), text
