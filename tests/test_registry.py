"""Methods register themselves: a new one, registered here and nowhere else, is a choice of the command line,
passes the manifest's check and takes its place in ``compare``; names are taken once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import unet_fingerprint
from conceptvault.cli import main
from conceptvault.concepts import HideResult, check_inputs
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.registry import (
    KeyKind,
    MethodSpec,
    choices,
    get_method,
    register_method,
    unregister_method,
    variant_settings,
)
from conceptvault.settings import Settings, option
from conceptvault.vault import Vault


@dataclass
class ToyConfig(Settings):
    """A fifth method's settings, as a method package would declare them."""

    scale: float = option(1.0, "How much of each cross-attention value projection is kept.")
    seed: int = option(0, "Unused.")

    positive: ClassVar[tuple[str, ...]] = ("scale",)


def toy_erase(
    pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True
):
    """Scales every cross-attention value projection (a closed form: nothing to checkpoint, no keys)."""
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    base = unet_fingerprint(pipe.unet)
    public = {}
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if name.endswith("attn2.to_v.weight"):
                parameter.mul_(config.scale)
                public[name] = parameter.detach().cpu().clone()
    stats = {"steps": 0, "seconds": 0.0}
    return HideResult(public, {}, stats, base, concepts, config, preserve, method="toy")


@pytest.fixture
def toy():
    spec = register_method(
        MethodSpec(
            "toy", ToyConfig, toy_erase, KeyKind.NONE, "scales cross-attention values", {"small": {"scale": 0.5}}
        )
    )
    yield spec
    unregister_method("toy")


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_the_registry_knows_the_methods_and_their_variants():
    assert {"kpop", "sealed", "esd", "uce"} <= {spec.name for spec in (get_method(n) for n in choices())}
    assert choices(with_keys=True)[:2] == ["kpop", "sealed"] and "esd-u" in choices(with_keys=False)
    assert get_method("esd-u").name == "esd" and variant_settings("esd-u") == {"train": "noxattn"}
    with pytest.raises(ConceptVaultError, match="unknown method 'magic'; one of"):
        get_method("magic")


def test_a_name_is_registered_once(toy):
    for name in ("toy", "kpop", "esd-x"):
        with pytest.raises(ValueError, match=f"a method named '{name}' is registered already"):
            register_method(MethodSpec(name, ToyConfig, toy_erase, KeyKind.NONE, "again"))


def test_a_fifth_method_reaches_the_command_line_the_manifest_and_compare(toy, sd1_path, tmp_path, capsys):
    erased = tmp_path / "toy"
    code, out, err = run(capsys, "erase", sd1_path, "--concept", "star", "--method", "toy", "--out", erased)
    assert code == 0, err
    manifest = json.loads((erased / "manifest.json").read_text())
    assert manifest["method"] == "toy" and manifest["config"] == {"scale": 1.0, "seed": 0}  # sd1: the class's own
    assert Vault.load(erased).method is toy
    code, out, err = run(capsys, "inspect", erased)
    assert code == 0 and "toy" in out
    code, _, err = run(capsys, "erase", sd1_path, "--concept", "star", "--method", "toy", "--set", "scale=nan",
                       "--out", tmp_path / "bad")  # fmt: skip
    assert code == 1 and "scale must be a finite number" in err and not (tmp_path / "bad").exists()
    code, _, err = run(capsys, "hide", sd1_path, "--concept", "star", "--method", "toy", "--out", tmp_path / "k")
    assert code == 1 and "use conceptvault erase --method toy" in err

    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)
    code, out, err = run(capsys, "compare", erased, "--suite", suite, "--out", tmp_path / "cmp")
    assert code == 0, err
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert data["vaults"]["toy"]["method"] == "toy" and "rsr" not in data["vaults"]["toy"]


def test_a_vault_of_a_method_this_install_lacks_is_one_clear_line(toy, sd1_path, tmp_path, capsys):
    erased = tmp_path / "toy"
    assert run(capsys, "erase", sd1_path, "--concept", "star", "--method", "toy", "--out", erased)[0] == 0
    unregister_method("toy")
    code, _, err = run(capsys, "inspect", erased)
    assert code == 1 and 'method is "toy", not one of' in err and err.count("\n") == 1


def test_the_old_spellings_still_work_and_name_the_new_ones():
    import importlib
    import sys

    import conceptvault

    for old, new in (("hide", "kpop"), ("seal", "sealed"), ("esd", "esd"), ("uce", "uce")):
        sys.modules.pop(f"conceptvault.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"conceptvault.methods.{new} instead"):
            importlib.import_module(f"conceptvault.{old}")
        sys.modules.pop(f"conceptvault.{old}")
        delattr(conceptvault, old)  # importing the module set the package's attribute: the function is the API
    assert callable(conceptvault.hide) and conceptvault.hide.__module__ == "conceptvault.methods.kpop.hide"
    with pytest.warns(DeprecationWarning, match="import it from conceptvault.concepts"):
        from conceptvault.training import Concept  # noqa: F401
