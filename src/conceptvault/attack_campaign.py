"""A red-team campaign: the same attacks on a vault's public model and on the controls that give the
figures their meaning (the original model, an erased model, a model that never learned the concept).

The public model is made from the vault loaded without its keys; the keys are read only afterwards,
and only to measure the authorised RSR beside the attacks' figures (where they are at hand).

Benign fine-tuning learns from captioned pictures of the suite's kept concepts, never the hidden one: a folder
of pictures each with a same-named ``.txt`` caption (``benign_from``), else the model profile's own (renders of
the built-in world's kept concepts with their captions), else pictures the public model itself makes for the
suite's kept prompts, captioned by those prompts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .attack_report import AttackRun, write
from .attacks import Attack, AttackConfig, AttackResult, KeySpec, Recovery, run_attack
from .attacks_prompt_search import RING_A_BELL_STRENGTH, concept_words, words_pattern
from .backbone import load_pipeline
from .defaults import family_config
from .errors import ConceptVaultError
from .evaluate.judges import make_judge
from .evaluate.suite import Suite
from .generate import generate_images
from .key import Key, Placement
from .methods.kpop import HideConfig
from .profiles import Profile, profile_for
from .vault import Vault

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_BENIGN_SEEDS = 100_000  # the public model's own benign pictures are drawn from seeds apart from the suite's


@dataclass
class Target:
    """One attacked model: a label and its pipeline, as the attacker has it."""

    name: str
    pipe: object


def _attacker_key_spec(manifest, entry) -> KeySpec:
    """The shape of the keys the attacks try: the vault's own prompt key's, or, where the key is a weight change
    (sealed hiding), the prompt key that hiding would have made on this model family."""
    if manifest.placement is None:
        shape = family_config(manifest.family) if manifest.family else HideConfig()
        return KeySpec(shape.m, shape.placement)
    norms = tuple(entry.key_norm) if entry.key_norm else None
    rank = manifest.config.get("key_rank", 0)  # vaults from before ranked keys have tokens only
    change_lr = manifest.config.get("key_change_lr", HideConfig().key_change_lr)
    return KeySpec(manifest.m, Placement(manifest.placement), norms, rank, change_lr)


@dataclass
class Campaign:
    vault_path: Path
    suite: Suite
    config: AttackConfig
    targets: list[Target]
    judge: object
    images: list[Image.Image]
    prompts: list[str]
    key_spec: KeySpec
    other_keys: dict[str, Key] = field(default_factory=dict)
    base_model: str = ""
    passphrase: str | None = None
    device: str | None = None
    words: list[str] = field(default_factory=list)  # every name of the hidden concept the profile knows
    benign: list[tuple[Image.Image, str]] | None = None  # None: made by the public model when first needed

    @classmethod
    def prepare(
        cls,
        vault_path: Path,
        suite: Suite,
        *,
        steps: int = 300,
        images: int = 64,
        lr: float | None = None,
        tokens: int | None = None,
        strength: float = RING_A_BELL_STRENGTH,
        images_from: Path | None = None,
        benign_from: Path | None = None,
        prompts_file: Path | None = None,
        controls=(),
        other_vaults=(),
        model: str | None = None,
        passphrase: str | None = None,
        device: str | None = None,
    ) -> Campaign:
        """Check everything the campaign needs (before any model loads), then load the attacked models."""
        if len(suite.hidden) != 1:
            raise ConceptVaultError(
                f"attacks target one hidden concept; the suite {suite.name!r} hides {len(suite.hidden)}."
            )
        concept = suite.hidden[0]
        public = Vault.load(vault_path, keys=None)  # the attacker's view: never the keys (an erased vault has none)
        entry = (
            public.manifest.entry(concept.key_name)
            if concept.key_name in public.concepts
            else public.manifest.concepts[0]
        )
        spec = _attacker_key_spec(public.manifest, entry)
        profile = profile_for(public.manifest.base_model)
        pictures = _pictures(profile, suite, concept.name, images, images_from)
        words = profile.concept_words(suite.judge, concept.name)
        benign = _benign_pictures(profile, suite, images, benign_from, concept_words(concept, words))
        prompts = profile.attack_prompts(suite.judge, concept.name) + _prompts_from(prompts_file)
        others = {}
        for path in other_vaults:
            other = Vault.load(path, keys="all", passphrase=passphrase)
            others.update({f"{path.name}/{name}": key for name, key in other.keys.items()})
        base_model = model or public.manifest.base_model
        targets = [Target("public", _public_pipeline(public, base_model, device))]
        targets += [_control(name, base_model, device) for name in controls]
        config = AttackConfig(steps=steps, images=images, lr=lr, tokens=tokens, strength=strength)
        judge = make_judge(suite, device=str(targets[0].pipe.device))
        return cls(
            Path(vault_path),
            suite,
            config,
            targets,
            judge,
            pictures,
            prompts,
            spec,
            others,
            base_model,
            passphrase,
            device,
            words,
            benign,
        )

    def recovery(self, pipe) -> Recovery:
        return Recovery(
            pipe,
            self.judge,
            self.suite.hidden[0],
            self.suite.steps,
            self.suite.guidance,
            f"top-{self.suite.top_k[0]}" if self.suite.judge != "nudenet" else self.judge.measures[0],
            8,
        )

    def run(self, attacks: list[Attack], log=print, out: Path | None = None) -> AttackRun:
        """Every attack on every target; with ``out``, the report is rewritten as each attack ends, so an
        interruption keeps the finished ones."""
        concept = self.suite.hidden[0]
        original = load_pipeline(self.base_model, device=self.device)
        run = AttackRun(concept.name, self.suite.name, self.recovery(original)().as_dict(), self._rsr())
        for target in self.targets:
            for attack in attacks:
                log(f"{attack.value} on {target.name} ...")
                result = self.attack(target, attack, log)
                run.results.append(result)
                if out is not None:
                    self.write(run, out)
                log(
                    f"  recovery {100 * result.recovery['value']:.1f} % (n={result.recovery['n']}) "
                    f"in {result.budget['seconds']:.0f} s"
                )
        return run

    def attack(self, target: Target, attack: Attack, log=print) -> AttackResult:
        """One attack on one target, with the campaign's pictures, prompts and settings."""
        if attack == Attack.BENIGN_FINETUNE and self.benign is None:
            self.benign = self._made_benign_pictures(log)
        return run_attack(
            attack,
            target.pipe,
            self.recovery(target.pipe),
            self.config,
            model=target.name,
            images=self.images,
            prompts=self.prompts,
            key_spec=self.key_spec,
            other_keys=self.other_keys,
            benign=self.benign or (),
            words=self.words,
        )

    def _made_benign_pictures(self, log) -> list[tuple[Image.Image, str]]:
        """Pictures the public model makes for the suite's kept prompts (in turn across the kept concepts),
        each captioned by its prompt; prompts that name the hidden concept are left out."""
        named = words_pattern(concept_words(self.suite.hidden[0], self.words)).search
        columns = [[p for p in c.prompts if not named(p)] for c in self.suite.kept]
        prompts = [p for row in itertools.zip_longest(*columns) for p in row if p is not None]
        if not prompts:
            raise ConceptVaultError(
                "the benign-finetune attack needs kept concepts in the suite, or captioned pictures of them "
                "(`benign_from`)."
            )
        prompts = [prompts[i % len(prompts)] for i in range(self.config.images)]
        log(f"benign-finetune: making {len(prompts)} pictures of kept concepts with the public model ...")
        seeds = list(range(_BENIGN_SEEDS, _BENIGN_SEEDS + len(prompts)))
        pipe = self.targets[0].pipe
        pictures = generate_images(
            pipe, prompts, seeds, steps=self.suite.steps, guidance=self.suite.guidance, progress=False
        )
        return list(zip(pictures, prompts, strict=True))

    def _rsr(self) -> dict | None:
        """The key holder's rate on the same prompts and seeds, where the keys can be read."""
        try:
            vault = Vault.load(self.vault_path, keys="all", passphrase=self.passphrase)
        except ConceptVaultError:
            return None
        name = self.suite.hidden[0].key_name
        if name not in vault.keys:
            return None
        pipe = load_pipeline(self.base_model, device=self.device)
        with vault.applied(pipe):
            return self.recovery(pipe)(keys=[name]).as_dict()

    def write(self, run: AttackRun, out: Path) -> dict[str, Path]:
        return write(run, Path(out))


def _public_pipeline(vault: Vault, model: str, device: str | None):
    pipe = load_pipeline(model, device=device)
    vault.apply(pipe)
    return pipe


def _control(name: str, base_model: str, device: str | None) -> Target:
    """'original' (the base model as loaded), a vault folder (its public model) or a model folder."""
    if name == "original":
        return Target("original", load_pipeline(base_model, device=device))
    path = Path(name)
    if (path / "manifest.json").is_file():
        vault = Vault.load(path, keys=None)
        return Target(f"{path.name} ({vault.method.name})", _public_pipeline(vault, vault.manifest.base_model, device))
    return Target(path.name, load_pipeline(name, device=device))


def _pictures(profile: Profile, suite: Suite, concept: str, count: int, folder: Path | None) -> list[Image.Image]:
    """The attacker's pictures: a folder of them, or the model profile's own (renders of a world concept)."""
    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:count]
        if not files:
            raise ConceptVaultError(
                f"no pictures (.png, .jpg, .webp) in '{folder}'; give a folder of the concept's pictures."
            )
        return [Image.open(p).convert("RGB") for p in files]
    pictures = profile.pictures(suite.judge, concept, count)
    if pictures is None:
        raise ConceptVaultError("outside the built-in world, give pictures of the concept (`images_from`).")
    return pictures


def _benign_pictures(
    profile: Profile, suite: Suite, count: int, folder: Path | None, words: list[str]
) -> list[tuple[Image.Image, str]] | None:
    """Captioned pictures of other concepts: a folder of them, or the profile's renders of the suite's kept
    concepts (None: the public model makes them when the attack first needs them)."""
    if folder is None:
        return profile.captioned_pictures(suite.judge, [c.name for c in suite.kept], count)
    folder = Path(folder)
    wanted = "give a folder of pictures (.png, .jpg, .webp), each with a same-named .txt caption"
    if not folder.is_dir():
        raise ConceptVaultError(
            f"the folder of captioned pictures '{folder}' does not exist; {wanted} (`benign_from`)."
        )
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.with_suffix(".txt").is_file()
    )[:count]
    if not files:
        raise ConceptVaultError(f"no captioned pictures in '{folder}'; {wanted} (`benign_from`).")
    named = words_pattern(words).search
    pictures = []
    for path in files:
        caption = " ".join(path.with_suffix(".txt").read_text(errors="replace").split())
        if named(caption):
            raise ConceptVaultError(
                f"the caption of '{path.name}' names the hidden concept ('{caption}'); benign fine-tuning learns "
                "from other concepts only: take that picture out of `benign_from`."
            )
        pictures.append((Image.open(path).convert("RGB"), caption))
    return pictures


def _prompts_from(file: Path | None) -> list[str]:
    """The lines of a prompts file (none without one)."""
    if file is None:
        return []
    try:
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise ConceptVaultError(f"cannot read the prompts file '{file}' ({error.strerror}).") from None
