"""A suite is data: the concepts to hide and to keep, their prompts and seeds, and the judge that scores them.

Suites round-trip through JSON (``Suite.save`` / ``load_suite``) and can be built from a CSV of prompts
(``suite_from_csv``), so users add their own without writing code.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from conceptvault.errors import ConceptVaultError
from conceptvault.files import atomic_write_text


@dataclass
class SuiteConcept:
    """One concept of a suite and the prompts (each with its seed) that ask for it."""

    name: str = field(metadata={"help": "the concept's name; for a hidden concept also its key's name by default"})
    prompts: list[str] = field(metadata={"help": "one prompt per image"})
    seeds: list[int] = field(metadata={"help": "one seed per prompt; the same for every model compared"})
    labels: list[str] = field(
        default_factory=list,
        metadata={"help": "the judge's labels (names or class indices) that count as this concept; default [name]"},
    )
    key: str | None = field(default=None, metadata={"help": "the vault key that recovers it; default the name"})
    guidance: list[float] | None = field(
        default=None, metadata={"help": "a guidance scale per prompt, overriding the suite's (I2P carries one)"}
    )
    unnamed: list[str] | None = field(
        default=None,
        metadata={
            "help": "for a hidden concept, each prompt with the concept's words taken out: the original model's "
            "images of them give the never-learned ESR"
        },
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a suite concept needs a name; give name='...'.")
        self.prompts = [str(p) for p in self.prompts]
        self.seeds = [int(s) for s in self.seeds]
        if not self.prompts:
            raise ValueError(f"concept {self.name!r} has no prompts; give at least one.")
        if len(self.prompts) != len(self.seeds):
            raise ValueError(
                f"concept {self.name!r} has {len(self.prompts)} prompts but {len(self.seeds)} seeds; "
                "give one seed per prompt."
            )
        if self.guidance is not None and len(self.guidance) != len(self.prompts):
            raise ValueError(
                f"concept {self.name!r} has {len(self.guidance)} guidance values for {len(self.prompts)} prompts; "
                "give one per prompt or none."
            )
        if self.unnamed is not None and len(self.unnamed) != len(self.prompts):
            raise ValueError(
                f"concept {self.name!r} has {len(self.unnamed)} unnamed prompts for {len(self.prompts)} prompts; "
                "give one per prompt or none."
            )
        self.labels = list(self.labels) or [self.name]

    @property
    def key_name(self) -> str:
        return self.key or self.name

    def guidance_at(self, index: int, default: float) -> float:
        return float(self.guidance[index]) if self.guidance is not None else default


@dataclass
class Suite:
    """What to measure: hidden and kept concepts, the judge, and how images are generated."""

    name: str = field(metadata={"help": "the suite's name, used in reports"})
    judge: str = field(
        metadata={"help": "a judge name: world-shape, world-colour, world-style, imagenet, nudenet, clip"}
    )
    hidden: list[SuiteConcept] = field(metadata={"help": "concepts the vault hides (ESR, RSR)"})
    kept: list[SuiteConcept] = field(default_factory=list, metadata={"help": "concepts that must survive (PSR)"})
    top_k: list[int] = field(default_factory=lambda: [1], metadata={"help": "top-k values for classifier judges"})
    thresholds: list[float] = field(
        default_factory=lambda: [0.5], metadata={"help": "score thresholds for detector judges (NudeNet)"}
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "a hub id or folder for judges that load a model; default the judge's own"}
    )
    steps: int = field(default=25, metadata={"help": "sampler steps per image"})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    height: int | None = field(default=None, metadata={"help": "image height; default the model's"})
    width: int | None = field(default=None, metadata={"help": "image width; default the model's"})
    description: str = field(default="", metadata={"help": "one line saying what the suite measures"})

    def __post_init__(self) -> None:
        self.hidden = [_concept(c) for c in self.hidden]
        self.kept = [_concept(c) for c in self.kept]
        if not self.hidden:
            raise ValueError(f"suite {self.name!r} hides no concept; give at least one hidden concept.")
        names = [c.name for c in self.concepts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"suite {self.name!r} names {duplicates} more than once; give each concept once.")
        if not self.top_k or any(int(k) < 1 for k in self.top_k):
            raise ValueError(f"top_k must hold positive integers, got {self.top_k!r}.")
        self.top_k = sorted({int(k) for k in self.top_k})
        if not self.thresholds or any(not 0 < float(t) < 1 for t in self.thresholds):
            raise ValueError(f"thresholds must lie strictly between 0 and 1, got {self.thresholds!r}.")
        self.thresholds = sorted({float(t) for t in self.thresholds})
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")

    @property
    def concepts(self) -> list[SuiteConcept]:
        return [*self.hidden, *self.kept]

    @property
    def images_per_model(self) -> int:
        return sum(len(c.prompts) for c in self.concepts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Suite:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown suite fields {unknown}; the fields are {sorted(known)}.")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _concept(value: SuiteConcept | dict) -> SuiteConcept:
    return value if isinstance(value, SuiteConcept) else SuiteConcept(**value)


def load_suite(path: str | Path) -> Suite:
    """A suite from a JSON file written by ``Suite.save`` (or by hand, with the same fields)."""
    path = Path(path)
    if not path.is_file():
        raise ConceptVaultError(f"suite file {str(path)!r} does not exist; give the path of a suite JSON file.")
    try:
        return Suite.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConceptVaultError(f"suite file {str(path)!r} is not a valid suite: {error}") from error


def read_prompt_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a prompt CSV as dictionaries (column name -> text)."""
    path = Path(path)
    if not path.is_file():
        raise ConceptVaultError(f"prompt file {str(path)!r} does not exist; give the path of a CSV of prompts.")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parse_seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return int(float(text))


def _column(rows: list[dict[str, str]], wanted: str, path: Path) -> str:
    columns = list(rows[0]) if rows else []
    if wanted not in columns:
        raise ConceptVaultError(f"prompt file {str(path)!r} has no column {wanted!r}; its columns are {columns}.")
    return wanted


def suite_from_csv(
    path: str | Path,
    *,
    name: str,
    judge: str,
    hidden: list[str],
    concept_column: str = "concept",
    prompt_column: str = "prompt",
    seed_column: str = "evaluation_seed",
    guidance_column: str | None = None,
    labels: dict[str, list[str]] | None = None,
    limit: int | None = None,
    **suite_fields,
) -> Suite:
    """A suite from a CSV with one row per image: the concept it asks for, the prompt and the seed.

    Concepts named in ``hidden`` are hidden, every other concept in the file is kept. ``labels`` maps a
    concept to the judge labels that count as it (default: its name); ``limit`` keeps the first rows of
    each concept. Other keyword arguments are ``Suite`` fields (``top_k``, ``steps``, ...).
    """
    path = Path(path)
    rows = read_prompt_rows(path)
    if not rows:
        raise ConceptVaultError(f"prompt file {str(path)!r} has no rows; give a CSV with a header and prompts.")
    for column in (concept_column, prompt_column, seed_column, guidance_column):
        if column:
            _column(rows, column, path)
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(row[concept_column], []).append(row)
    missing = [h for h in hidden if h not in grouped]
    if missing:
        raise ConceptVaultError(
            f"hidden concepts {missing} are not in {str(path)!r}; its concepts are {sorted(grouped)}."
        )
    labels = labels or {}

    def concept(concept_name: str) -> SuiteConcept:
        chosen = grouped[concept_name][:limit]
        return SuiteConcept(
            name=concept_name,
            prompts=[r[prompt_column] for r in chosen],
            seeds=[parse_seed(r[seed_column]) for r in chosen],
            labels=labels.get(concept_name, []),
            guidance=[float(r[guidance_column]) for r in chosen] if guidance_column else None,
        )

    return Suite(
        name=name,
        judge=judge,
        hidden=[concept(h) for h in hidden],
        kept=[concept(c) for c in grouped if c not in hidden],
        **suite_fields,
    )
