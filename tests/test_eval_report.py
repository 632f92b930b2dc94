"""report.md, the rich table and the charts, from a hand-made results dict."""

import json
import math

import pytest

from dinov2clip.evaluate.plots import (
    chance_recall,
    epochs_chart,
    epochs_figure,
    recall_chart,
    recall_figure,
)
from dinov2clip.evaluate.report import (
    markdown,
    print_table,
    seed_comparison,
    summary,
    without_nan,
)
from dinov2clip.retrieval import percent_of

KS = [1, 5, 10]


def set_result(clip: float, projected: float, ensemble: float) -> dict:
    """Every R@k of a row is base + k (so R@1 < R@5 < R@10)."""
    rows = {name: {f"{d}_R@{k}": base + k for d in ("t2i", "i2t") for k in KS}
            for name, base in (("clip", clip), ("projected", projected),
                               ("ensemble", ensemble))}
    res = {"n_images": 5000, "n_captions": 25000, **rows,
           "projected_pct": percent_of(rows["clip"], rows["projected"]),
           "ensemble_pct": percent_of(rows["clip"], rows["ensemble"])}
    res["summary"] = summary(res, KS)
    return res


def results_for(names: list[str]) -> dict:
    sets = {}
    for name in names:
        res = set_result(40.0, 30.0, 42.0)
        if comparison := seed_comparison(name, res, KS):
            res["seed_comparison"] = comparison
        sets[name] = res
    return {"run": "seed", "ks": KS, "note": "", "sets": sets,
            "run_info": {"checkpoint": "model.safetensors", "best_epoch": 16, "tag": "t",
                         "git_sha": "abc", "device": "cpu"}}


def test_summary_is_the_mean_over_k_and_r5():
    res = set_result(40.0, 30.0, 42.0)
    want = (31 / 41 + 35 / 45 + 40 / 50) / 3 * 100
    assert res["summary"]["projected_pct_mean"]["t2i"] == pytest.approx(want)
    assert res["summary"]["projected_pct_r5"]["i2t"] == pytest.approx(100 * 35 / 45)


def test_report_puts_the_seed_numbers_beside_ours():
    results = results_for(["mscoco", "flickr30k", "shapes"])
    md = markdown(results)
    assert md.count("| seed project, published |") == 2  # mscoco, flickr30k; not shapes
    assert "| seed project, published | 82.90 | 77.57 |" in md
    assert "| seed project, published | 92.10 | 91.53 |" in md
    mean = results["sets"]["mscoco"]["summary"]["projected_pct_mean"]
    assert f"| ours, mean of R@1/R@5/R@10 % of CLIP | {mean['t2i']:.2f} | {mean['i2t']:.2f} |" in md
    assert "image retrieval = text->image" in md and "CLIP_benchmark default" in md
    assert "| projected | 31.00 | 35.00 | 40.00 | 31.00 | 35.00 | 40.00 |" in md
    assert "(best epoch 16)" in md and "ranked on `cpu` in float32" in md
    # The CLIP_benchmark names for the same sets get the same comparison.
    assert seed_comparison("mscoco_captions", results["sets"]["mscoco"], KS) is not None


def test_undefined_percentages_are_na_and_null():
    res = set_result(-1.0, 3.0, 3.0)  # CLIP R@1 = 0: % of CLIP undefined
    assert math.isnan(res["projected_pct"]["t2i_R@1"])
    results = {"run": "r", "ks": KS, "note": "", "sets": {"s": res},
               "run_info": {"checkpoint": "c", "best_epoch": None, "tag": "t", "git_sha": None,
                            "device": "cpu"}}
    assert "| projected, % of CLIP | n/a |" in markdown(results)
    text = json.dumps(without_nan(results), allow_nan=False)  # raises on any NaN left
    assert '"t2i_R@1": null' in text


def test_rich_table_prints_every_row(capsys):
    print_table(results_for(["mscoco"]))
    out = capsys.readouterr().out
    for row in ("clip", "projected", "ensemble", "projected % of CLIP", "82.90 / 77.57"):
        assert row in out


def test_charts_are_drawn(tmp_path):
    results = results_for(["mscoco", "flickr8k"])
    recall_chart(results, tmp_path / "recall.png")
    per_epoch = [{"epoch": e, "summary": set_result(40.0, 20.0 + e, 41.0)["summary"]}
                 for e in (1, 2, 3)]
    epochs = {"run_info": {"best_epoch": 2}, "epochs": [1, 2, 3],
              "sets": {"mscoco": {"per_epoch": per_epoch}}}
    epochs_chart(epochs, tmp_path / "epochs.png")
    for name in ("recall.png", "epochs.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / name).stat().st_size > 5000


def test_recall_axis_fits_the_data_and_bars_carry_their_values():
    results = results_for(["mscoco"])  # recalls 31..50 %: an axis to 100 would waste half
    ax = recall_figure(results).axes[0]
    low, high = ax.get_ylim()
    assert low == 0 and 50 < high <= 60
    assert {"31.0", "40.0", "50.0"} <= {t.get_text() for t in ax.texts}  # each bar's value


def test_chance_recall_is_k_over_n_images_and_a_random_caption_ranking():
    chance = chance_recall({"n_images": 50, "n_captions": 250}, [1, 5, 10])
    assert chance["t2i_R@1"] == 2.0 and chance["t2i_R@10"] == 20.0  # k / n_images
    # Image->text, 5 captions each: 1 - C(245, k) / C(250, k), checked by brute force for k=1.
    assert chance["i2t_R@1"] == pytest.approx(100 * 5 / 250)
    assert chance["i2t_R@5"] == pytest.approx(
        100 * (1 - math.comb(245, 5) / math.comb(250, 5)))
    assert chance_recall({"n_images": 4, "n_captions": 8}, [10])["t2i_R@10"] == 100.0
    assert chance_recall({"n_images": 4, "n_captions": 8}, [7])["i2t_R@7"] == 100.0


def test_recall_chart_draws_each_keys_chance_level():
    results = results_for(["tiny"])
    results["sets"]["tiny"].update(n_images=20, n_captions=100)
    fig = recall_figure(results)
    ax = fig.axes[0]
    [marks] = [c for c in ax.collections if c.get_label() == "chance (random ranking)"]
    levels = [seg[0][1] for seg in marks.get_segments()]
    want = chance_recall(results["sets"]["tiny"], KS)
    assert levels == pytest.approx([want[k] for k in (*(f"t2i_R@{k}" for k in KS),
                                                       *(f"i2t_R@{k}" for k in KS))])
    assert levels[:3] == pytest.approx([5.0, 25.0, 50.0])  # k / 20 images
    assert ax.get_legend() is None  # one legend, above the panels, off the bars
    assert "chance (random ranking)" in {t.get_text() for t in fig.legends[0].get_texts()}
    assert ax.get_ylim()[1] >= max(levels)


def test_epochs_chart_shows_clip_at_100_and_says_which_colour_is_which_direction():
    per_epoch = [{"epoch": e, "summary": set_result(40.0, 20.0 + e, 41.0)["summary"]}
                 for e in (1, 2, 3)]
    epochs = {"run_info": {"best_epoch": 2}, "epochs": [1, 2, 3],
              "sets": {"mscoco": {"per_epoch": per_epoch}}}
    ax = epochs_figure(epochs).axes[0]
    assert any(list(line.get_ydata()) == [100, 100] for line in ax.lines)  # CLIP itself
    legends = [a for a in ax.get_children() if a.__class__.__name__ == "Legend"]
    texts = {t.get_text() for legend in legends for t in legend.get_texts()}
    titles = {legend.get_title().get_text() for legend in legends}
    assert "direction" in titles and {"text->image", "image->text"} <= texts
    assert {"projected", "ensemble", "CLIP (100 %)", "chosen epoch 2"} <= texts
