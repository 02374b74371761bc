"""Measurement records and the results page: the schema refuses what is incomplete, the page is the render."""

import copy
import importlib.util
import re
from pathlib import Path

import pytest

from conceptvault.records import (
    RecordError,
    builtin_model_fingerprint,
    builtin_record,
    check_record,
    current_commit,
    folder_fingerprint,
    machine,
    read_record,
    read_records,
    shipped_judge_fingerprint,
    write_record,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = "a" * 64


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "bench" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def a_record(**changes) -> dict:
    record = {
        "schema_version": 1,
        "id": "demo-star",
        "title": "The demo",
        "status": "measured",
        "superseded_by": None,
        "command": "conceptvault demo",
        "commit": "0123456789abcdef",
        "model_fingerprint": SHIPPED_MODEL,
        "judge_fingerprint": shipped_judge_fingerprint(),
        "settings": {"steps": 25},
        "seeds": [0, 1, 2, 3],
        "n": 8,
        "figures": {
            "ESR-1 (public)": {
                "value": 0.75,
                "interval": [0.3, 0.95],
                "n": 4,
                "unit": "share",
                "original": {"value": 0.0, "interval": [0.0, 0.49], "n": 4},
            },
            "hiding time": {"value": 178.0, "interval": None, "n": 1, "unit": "s"},
        },
        "machine": {"cores": 2, "device": "cpu"},
        "wall_seconds": 336.0,
        "created": "2026-12-07T06:00:00+00:00",
        "notes": "",
    }
    record.update(changes)
    return record


def test_a_complete_record_is_written_atomically_and_read_back_the_same(tmp_path):
    path = write_record(a_record(), tmp_path)
    assert path == tmp_path / "demo-star.json" and read_record(path) == a_record()
    assert [p.name for p in tmp_path.iterdir()] == ["demo-star.json"]  # no temporary file left behind


def test_a_record_missing_a_field_is_refused_naming_the_field(tmp_path):
    record = a_record()
    del record["judge_fingerprint"]
    with pytest.raises(RecordError, match="has no field 'judge_fingerprint'"):
        check_record(record)
    path = tmp_path / "demo-star.json"
    path.write_text(__import__("json").dumps(record))
    with pytest.raises(RecordError, match=re.escape(f"{path}: the record has no field 'judge_fingerprint'")):
        read_record(path)


def test_a_figure_without_its_n_is_refused_naming_the_figure():
    record = a_record()
    del record["figures"]["ESR-1 (public)"]["n"]
    with pytest.raises(RecordError, match="figure 'ESR-1 \\(public\\)' has no field 'n'"):
        check_record(record)
    record = a_record()
    del record["figures"]["ESR-1 (public)"]["original"]["n"]
    with pytest.raises(RecordError, match="'original' has no field 'n'"):
        check_record(record)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"status": "superseded"}, "names its successor"),
        ({"superseded_by": "demo-star-2"}, "names its successor"),
        ({"status": "done"}, "status 'done'"),
        ({"n": "64"}, "n='64'; it must be int"),
        ({"id": "Demo Star"}, "lower-case letters"),
        ({"figures": {}}, "no figures"),
        ({"machine": {"cores": 2}}, "its field 'machine' has no field 'device'"),
    ],
)
def test_other_faults_are_refused_with_one_clear_sentence(changes, message):
    with pytest.raises(RecordError, match=re.escape(message)):
        check_record(a_record(**changes))


def test_a_file_named_other_than_its_id_and_a_missing_successor_are_refused(tmp_path):
    path = write_record(a_record(), tmp_path).rename(tmp_path / "other.json")
    with pytest.raises(RecordError, match="name the file 'demo-star.json'"):
        read_record(path)
    path.unlink()
    write_record(a_record(id="old", status="superseded", superseded_by="new"), tmp_path)
    with pytest.raises(RecordError, match="superseded by 'new', which is not in"):
        read_records(tmp_path)


def test_the_page_renders_the_same_twice_and_marks_another_judge_and_history():
    render = load_renderer().render
    judge = shipped_judge_fingerprint()
    records = [
        a_record(),
        a_record(id="old-judge", judge_fingerprint="the first judge, before 2026-12-01"),
        a_record(id="demo-star-2026-12-01", status="superseded", superseded_by="demo-star"),
        a_record(id="attacks", status="not re-run"),
    ]
    page = render(records, judge, SHIPPED_MODEL)
    assert page == render(copy.deepcopy(records[::-1]), judge, SHIPPED_MODEL)
    row = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| [`")}
    assert "| shipped |" in row["demo-star"] and "**other judge**" in row["old-judge"]
    assert "superseded by [`demo-star`]" in row["demo-star-2026-12-01"] and "not re-run" in row["attacks"]
    assert "another judge than the shipped one**: `the first judge, before 2026-12-01`" in page
    assert "| ESR-1 (public) | 75.0 % | 30.0–95.0 % | 4 | 0.0 % | 0.0–49.0 % |" in page
    assert "| hiding time | 178 s | not stated | 1 |" in page


def test_the_committed_results_page_and_readme_table_are_the_render_of_the_committed_records():
    renderer = load_renderer()
    records = read_records()
    page = renderer.render(records, shipped_judge_fingerprint(), renderer.builtin_model_fingerprint())
    assert renderer.PAGE.read_text(encoding="utf-8") == page, "run python bench/render_results.py"
    readme = renderer.README.read_text(encoding="utf-8")
    assert renderer.with_readme_table(readme, records) == readme, "run python bench/render_results.py"


def test_the_readme_table_is_replaced_between_its_marks_only():
    renderer = load_renderer()
    start = "<!-- demo-star: table rendered by bench/render_results.py from its record -->"
    readme = f"# Title\n\n{start}\nold table\n{renderer.README_END}\n\nmore\n"
    filled = renderer.with_readme_table(readme, [a_record()])
    assert "old table" not in filled and filled.endswith(f"{renderer.README_END}\n\nmore\n")
    assert "| ESR-1 (public) | 75.0 % | 30.0–95.0 % | 4 | 0.0 % |" in filled
    assert renderer.with_readme_table(filled, [a_record()]) == filled


def test_adding_a_record_of_an_existing_id_keeps_the_old_one_as_superseded(tmp_path):
    add = load_renderer().add
    write_record(a_record(created="2026-12-01T00:00:00+00:00"), tmp_path)
    new = write_record(a_record(wall_seconds=300.0), tmp_path / "out")
    add(new, tmp_path)
    old = read_record(tmp_path / "demo-star-2026-12-01.json")
    assert old["status"] == "superseded" and old["superseded_by"] == "demo-star"
    assert read_record(tmp_path / "demo-star.json")["wall_seconds"] == 300.0
    assert len(read_records(tmp_path)) == 2
    # superseded again the same day (the record just added was made 2026-12-01 too): both earlier ones stay
    write_record(a_record(created="2026-12-01T09:00:00+00:00", wall_seconds=300.0), tmp_path)
    add(write_record(a_record(wall_seconds=400.0), tmp_path / "again"), tmp_path)
    assert read_record(tmp_path / "demo-star-2026-12-01.json")["created"] == "2026-12-01T00:00:00+00:00"
    assert read_record(tmp_path / "demo-star-2026-12-01-2.json")["wall_seconds"] == 300.0
    assert len(read_records(tmp_path)) == 3


def test_the_helpers_fill_in_commit_machine_and_fingerprints(tmp_path):
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", current_commit())
    assert current_commit(tmp_path) == "unknown"
    assert machine("cpu")["cores"] >= 1 and machine("cuda:0")["device"] == "cuda:0"
    (tmp_path / "w.bin").write_bytes(b"1")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"2")
    assert folder_fingerprint(tmp_path) != first and len(first) == 64


def test_an_evaluation_becomes_a_record_with_every_figure_its_interval_and_n():
    from types import SimpleNamespace

    from conceptvault.records import evaluation_record

    cell = {"value": 0.5, "n": 4, "ci": [0.15, 0.85], "original": {"value": 0.25, "n": 4, "ci": [0.05, 0.7]}}
    evaluation = SimpleNamespace(
        kind="rate",
        measures=["top-1"],
        figures={"esr": {"top-1": {"average": cell, "concepts": {}}}},
        fidelity={"key_vs_original": {"ssim": {"average": {"value": 0.9, "n": 4, "ci": [0.8, 1.0]}}}},
        fid={"hidden": {"original": 20.0, "public": 200.0, "floor": 10.0, "n": 4}},
        suite=SimpleNamespace(name="shape", judge="world-shape"),
        records=[SimpleNamespace(seed=s) for s in (3, 1, 1)],
        meta={"settings": {"steps": 25, "device": "cpu"}, "vault": {"base_fingerprint": SHIPPED_MODEL}},
    )
    record = evaluation_record(
        evaluation, id="x", title="t", command="c", settings={"hide": Path("p")}, wall_seconds=1.234
    )
    assert record["figures"]["ESR-1 (public)"] == {
        "value": 0.5,
        "interval": [0.15, 0.85],
        "n": 4,
        "unit": "share",
        "original": {"value": 0.25, "interval": [0.05, 0.7], "n": 4, "unit": "share"},
    }
    assert record["figures"]["SSIM, with key vs original (hidden concepts)"]["unit"] == "SSIM"
    assert record["figures"]["world FID, hidden concepts, public"] == {
        "value": 200.0,
        "interval": None,
        "n": 4,
        "unit": "FID",
    }
    assert record["seeds"] == [1, 3] and record["n"] == 3 and record["wall_seconds"] == 1.2
    assert record["judge_fingerprint"] == shipped_judge_fingerprint() and record["settings"]["hide"] == "p"
    assert record["settings"]["suite"] == "shape" and record["machine"]["device"] == "cpu"


def test_a_leaderboard_record_renders_as_one_table_a_row_per_model_and_a_chart(tmp_path):
    renderer = load_renderer()
    share = {"value": 0.5, "interval": [0.4, 0.6], "n": 64, "unit": "share"}
    record = a_record(
        id="leaderboard-star",
        settings={"leaderboard": {"rows": ["original model", "kpop", "esd-x"], "hidden": ["star"]}},
        figures={
            "original model: ESR": dict(share, value=0.0, interval=[0.0, 0.06]),
            "kpop: ESR": dict(share, value=1.0, interval=[0.94, 1.0]),
            "kpop: RSR": share,
            "esd-x: ESR": share,
            "kpop: finetune, steps to 50 %": {
                "value": 300,
                "interval": None,
                "n": 1,
                "unit": "steps",
                "censored": True,
            },
            "esd-x: time": {"value": 202.0, "interval": None, "n": 1, "unit": "s"},
        },
    )
    table = renderer.leaderboard_table(record)
    assert table[0] == "| model | ESR | RSR | finetune, steps to 50 % | time |"
    assert table[2] == "| original model | 0.0 % (0.0–6.0 %, n=64) | – | – | – |"
    assert table[3] == "| kpop | 100.0 % (94.0–100.0 %, n=64) | 50.0 % (40.0–60.0 %, n=64) | > 300 steps | – |"
    assert table[4] == "| esd-x | 50.0 % (40.0–60.0 %, n=64) | – | – | 202 s |"
    page = renderer.render([record], shipped_judge_fingerprint(), SHIPPED_MODEL)
    assert "\n".join(table) in page and "![leaderboard-star](images/leaderboard-star.png)" in page
    renderer.leaderboard_chart(record, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_a_record_with_a_never_trained_row_renders_its_frontier_with_bounds_where_an_attack_never_got_there(tmp_path):
    renderer = load_renderer()
    share = {"interval": [0.4, 0.6], "n": 64, "unit": "share"}

    def steps(value, censored=False):
        return {"value": value, "interval": None, "n": 1, "unit": "steps", "censored": censored}

    board = {"rows": ["original model", "never trained", "a", "b"], "hidden": ["star"]}
    figures = {
        "original model: PSR": dict(share, value=0.8),
        "original model: RSR": dict(share, value=1.0),
        "never trained: finetune, steps to 50 %": steps(300, censored=True),
        "a: finetune, steps to 50 %": steps(150),
        "a: PSR": dict(share, value=0.6),
        "a: RSR": dict(share, value=0.9),
        "a: time": {"value": 90.0, "interval": None, "n": 1, "unit": "s"},
        "b: finetune, steps to 50 %": steps(300, censored=True),
    }
    without = a_record(id="f", settings={"leaderboard": dict(board, original="original model", never_trained=None)})
    assert renderer.frontier_points(dict(without, figures=figures)) == []
    record = a_record(
        id="f",
        settings={"leaderboard": dict(board, original="original model", never_trained="never trained")},
        figures=figures,
    )
    table = renderer.frontier_table(record)
    assert table[0].startswith("| model | finetune, steps to 50 % | ratio to never trained (> 300) |")
    assert table[2] == "| a | 150 | ≤ 0.50 | 75.0 % | 90.0 % | 1.5 min |"
    assert table[3] == "| b | > 300 | neither reached 50 % | – | – | – |"
    page = renderer.render([record], shipped_judge_fingerprint(), SHIPPED_MODEL)
    assert "\n".join(table) in page and "![f frontier](images/f-frontier.png)" in page
    renderer.frontier_chart(record, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_a_builtin_record_names_the_shipped_model_and_judge():
    fields = {k: a_record()[k] for k in ("id", "title", "command", "settings", "seeds", "n", "figures")}
    record = builtin_record(**fields, wall_seconds=1.0)
    assert record["model_fingerprint"] == builtin_model_fingerprint()
    assert record["judge_fingerprint"] == shipped_judge_fingerprint() and record["figures"] == fields["figures"]


def test_a_censored_figure_must_say_so_with_true_or_false():
    figures = {"steps": {"value": 300, "interval": None, "n": 1, "unit": "steps", "censored": "yes"}}
    with pytest.raises(RecordError, match="censored='yes'; it must be true or false"):
        check_record(a_record(figures=figures))
