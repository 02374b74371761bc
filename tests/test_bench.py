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


def test_the_recovery_picture_shows_the_hidden_concept_from_each_model_in_rows(tmp_path):
    import json

    from PIL import Image

    recovery = load("recovery")
    evaluation = tmp_path / "evaluation"
    records, colours = [], {"original": "red", "unnamed": "yellow", "public": "blue", "key": "red"}
    for variant, colour in colours.items():
        for group in ("hidden", "kept"):
            for index in range(3):
                path = f"images/{variant}-{group}-{index}.png"
                (evaluation / "images").mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 64), colour if group == "hidden" else "green").save(evaluation / path)
                records.append(dict(variant=variant, group=group, path=path, label=colour))
    (evaluation / "images.json").write_text(json.dumps(records))
    picture = Image.open(recovery.hidden_picture(tmp_path, count=2)).convert("RGB")
    assert picture.size == (2 * 128, 4 * (128 + 14))  # enlarged to 128 px, a label strip under each
    for row, colour in enumerate(colours.values()):
        for column in range(2):
            expected = Image.new("RGB", (1, 1), colour).getpixel((0, 0))
            assert picture.getpixel((column * 128 + 64, row * 142 + 64)) == expected


def test_the_gpu_bench_runs_at_toy_size_and_gives_a_figure_or_a_reason_for_every_cell(tmp_path, monkeypatch, capsys):
    import json
    import sys

    gpu = load("gpu")
    args = ["gpu.py", "--toy", "--method", "uce", "--method", "sealed", "--updates", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", args)
    gpu.main()
    cells = json.loads((tmp_path / "gpu.json").read_text())
    assert set(cells) == {
        f"{shape}/{method}/fp32/{checkpointing}"
        for shape in ("toy-sd1", "toy-sdxl")
        for method in ("uce", "sealed")
        for checkpointing in ("off", "on")
    }
    for key, cell in cells.items():
        if key.endswith("sealed/fp32/off") and key.startswith("toy-sdxl"):
            assert "refused" in cell and "SDXL" in cell["refused"]  # sealing says it does not do SDXL yet
        elif "update_seconds" in cell:
            assert cell["update_seconds"] >= 0 and cell["setup_seconds"] >= 0 and cell["projected_minutes"] > 0
        else:
            assert set(cell) <= {"refused", "too noisy"}
    table = capsys.readouterr().out
    assert table.count("| toy-") == len(cells)


def test_the_cpu_cuts_bench_times_every_change_against_plain_fp32_in_the_same_rounds():
    from tiny_models import build_tiny_pipeline

    cuts = load("cpu_cuts")
    unet = build_tiny_pipeline("sd1").unet
    seconds, errors, compile_seconds = cuts.time_calls(unet, training_batch=2, repeats=2, compile_too=False)
    figures = cuts.figures_of(seconds, errors, compile_seconds)
    assert compile_seconds is None and "compiling" not in figures
    for call in ("training update", "caching call"):
        for change in ("fp32", "channels-last", "bf16"):
            time = figures[f"{call}, {change}: time"]
            assert time["n"] == 2 and time["value"] > 0
            assert figures[f"{call}, {change}: speed-up"]["value"] > 0
        assert figures[f"{call}, fp32: speed-up"]["value"] == 1.0
        assert 0 < figures[f"{call}, bf16: relative error"]["value"] < 0.05  # bf16 rounds, and no more than that
    assert all(parameter.grad is None for parameter in unet.parameters())  # the bench leaves no gradient behind
