"""The benchmarks' own arithmetic: a busy machine must give "too noisy", never an impossible figure."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_projection_refuses_noisy_timings_and_is_positive_otherwise():
    hide_step = load("hide_step")
    assert "too noisy" in hide_step.projection(0.5, [0.1, 0.9, 0.2])
    assert "too noisy" in hide_step.projection(-1.0, [0.1, 0.1, 0.1])
    text = hide_step.projection(0.5, [0.10, 0.11, 0.10])
    assert "projected" in text and "-" not in text.split("sample ")[1].split(" s/step")[0]
    assert "=" in text and float(text.split("= ")[1].split("x")[0]) > 1
