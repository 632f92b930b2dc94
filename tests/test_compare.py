"""compare's outputs from hand-made evaluated runs: compare.csv's numbers and compare.png."""

import csv
import json

import pytest

from dinov2clip.compare import CSV_COLUMNS, KS, chart_figure, compare, read_run
from dinov2clip.config import write_resolved
from dinov2clip.evaluate.report import DIRECTIONS, fmt
from tests.helpers import load


def projected(base: float) -> dict:
    """R@k = base + k text->image, base + 2k image->text; % of teacher = twice that, with
    image->text R@10's undefined (a teacher R@10 of 0: null in results.json)."""
    recall = {f"{d}_R@{k}": base + m * k for d, m in (("t2i", 1), ("i2t", 2)) for k in KS}
    pct = {key: 2 * v for key, v in recall.items()} | {"i2t_R@10": None}
    return {"projected": recall, "projected_pct": pct}


@pytest.fixture
def runs(tmp_path):
    """Two evaluated runs under tmp_path/runs: a (2 sets, best epoch 2) and b (1 set, unknown)."""
    art = tmp_path / "art"
    made = {}
    for name, loss, sets, best in (("a", "{unit_mse=1.0}", {"s1": 10.0, "s2": 20.0}, 2),
                                   ("b", "{cosine=1.0, text_infonce=0.25}", {"s1": 30.123456},
                                    None)):
        run = tmp_path / "runs" / name
        (run / "eval").mkdir(parents=True)
        write_resolved(load(art, f"train.loss={loss}"), run)
        results = {"ks": list(KS), "sets": {s: projected(v) for s, v in sets.items()},
                   "run_info": {"best_epoch": best}}
        (run / "eval" / "results.json").write_text(json.dumps(results))
        made[name] = run
    return made


def test_compare_csv_has_a_row_per_run_and_set_with_the_tables_numbers(runs, tmp_path):
    out = tmp_path / "cmp"
    compare([str(runs["a"]), str(runs["b"])], out_dir=out)
    with open(out / "compare.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == CSV_COLUMNS
    rows = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]]
    assert [(r["run"], r["set"]) for r in rows] == [("a", "s1"), ("a", "s2"), ("b", "s1")]
    a1, b1 = rows[0], rows[2]
    assert (a1["loss"], a1["best_epoch"], a1["epochs"]) == ("unit_mse", "2", "3")
    assert (b1["loss"], b1["best_epoch"]) == ("cosine + 0.25*text_infonce", "")
    # Unrounded: the numbers results.json holds, not the table's two decimals.
    assert float(b1["t2i_R@5"]) == 30.123456 + 5 and float(b1["i2t_R@1"]) == 30.123456 + 2
    assert float(b1["t2i_R@10_pct_of_teacher"]) == pytest.approx(2 * (30.123456 + 10))
    assert a1["i2t_R@10_pct_of_teacher"] == ""  # undefined stays empty, not "n/a" or nan
    # The same numbers as compare.md's rows, which round them.
    md = (out / "compare.md").read_text()
    for r in rows:
        for d, label in DIRECTIONS.items():
            recall = " | ".join(f"{float(r[f'{d}_R@{k}']):.2f}" for k in KS)
            pct = " | ".join(fmt(float(v) if (v := r[f"{d}_R@{k}_pct_of_teacher"]) else None, 1)
                             for k in KS)
            assert f"| {r['set']} | {label} | {recall} | {pct} |" in md


def test_compare_chart_labels_its_bars_and_keeps_the_legend_off_them(runs):
    fig = chart_figure([read_run(runs["a"]), read_run(runs["b"])])
    a_s1_t2i = sum(2 * (10.0 + k) for k in KS) / 3  # mean over k of % of teacher
    for ax in fig.axes:
        assert ax.get_legend() is None  # one legend for the figure, outside the panels
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert f"{a_s1_t2i:.1f}" in labels
    s2 = fig.axes[1]
    assert s2.get_title() == "s2" and "" in {t.get_text() for t in s2.texts}  # b has no s2
    fig.canvas.draw()
    legend = fig.legends[0]
    assert {t.get_text() for t in legend.get_texts()} == {"text->image", "image->text"}
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent())  # nor, so, any bar or its label
        for text in ax.texts:
            assert not box.overlaps(text.get_window_extent())
