"""Active learning: strategies rank sensibly, ``imgclass active`` writes the CSV and the montage,
``imgclass active simulate`` writes curves and a plot, and user errors are one line with exit code 2.

Everything runs on tiny generated colour images with ``pixels+logreg`` (fast, no deep model)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error as _one_line_error
from conftest import colour_array, write_colour_dataset
from conftest import run_cli as _run
from PIL import Image

from imgclass.errors import ConfigError, DataError
from imgclass.learning import active
from imgclass.learning.active import kcenter_greedy, select, simulate, suggest, uncertainty

METHOD = "pixels+logreg"
RED, GREEN, BLUE = (200, 40, 40), (40, 200, 40), (40, 40, 200)


def _save(folder: Path, name: str, rgb, seed: int, noise: float = 25.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.png"
    Image.fromarray(colour_array(rgb, np.random.default_rng(seed), 20, noise)).save(p)
    return p


def _snapshot(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


@pytest.fixture
def labelled(tmp_path) -> Path:
    return write_colour_dataset(tmp_path / "labelled", n_per_class=6, seed=1)


@pytest.fixture
def pool(tmp_path) -> dict:
    """``dir``: 9 clear pool images (3 per class) and 2 halfway between red and green; ``novel_dir``: the
    same plus a novel image (near-white, far from every class) and an exact copy of it."""
    d, d2 = tmp_path / "pool", tmp_path / "pool_novel"
    clear, ambiguous = [], []
    for folder in (d, d2):
        clear = [_save(folder, f"clear_{name}_{i}", rgb, seed=10 + 3 * k + i)
                 for k, (name, rgb) in enumerate({"red": RED, "green": GREEN, "blue": BLUE}.items()) for i in range(3)]
        ambiguous = [_save(folder, f"ambiguous_{i}", (120, 120, 40), seed=40 + i) for i in range(2)]
    novel = _save(d2, "novel_white", (245, 245, 245), seed=50, noise=5.0)
    (d2 / "novel_white_copy.png").write_bytes(novel.read_bytes())  # a duplicate: no new information
    return {"dir": d, "novel_dir": d2, "clear": clear, "ambiguous": ambiguous, "novel": novel}


# --------------------------------------------------------------------------- strategies on numbers
def test_uncertainty_scores_rank_ambiguous_rows_first():
    P = np.array([[0.98, 0.01, 0.01],   # confident
                  [0.50, 0.49, 0.01],   # torn between two classes: smallest margin
                  [0.34, 0.33, 0.33],   # torn between three: highest entropy, lowest top probability
                  [0.80, 0.15, 0.05]])
    assert np.argsort(-uncertainty(P, "entropy")).tolist()[:2] == [2, 1]
    assert np.argsort(-uncertainty(P, "least-confidence")).tolist()[:2] == [2, 1]
    assert np.argsort(-uncertainty(P, "margin")).tolist()[:2] == [1, 2]
    for s in ("entropy", "least-confidence", "margin"):
        assert int(np.argmin(uncertainty(P, s))) == 0
        idx, scores = select(s, 3, proba=P)
        assert len(idx) == 3 and len(set(idx.tolist())) == 3
        assert np.all(np.diff(scores) <= 0), "most useful first"


def test_random_strategy_is_a_seeded_permutation():
    P = np.full((20, 2), 0.5)
    a, sa = select("random", 20, proba=P, seed=3)
    b, _ = select("random", 20, proba=P, seed=3)
    c, _ = select("random", 20, proba=P, seed=4)
    assert sorted(a.tolist()) == list(range(20))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert np.isnan(sa).all()


def test_kcenter_greedy_is_farthest_first_and_updates_distances():
    labelled = np.zeros((3, 2))
    pool = np.array([[0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [0.0, 8.0], [0.0, 0.2]])
    idx, dist = kcenter_greedy(pool, labelled, 3)
    # (10.1, 0) is farthest; then (0, 8), not (10, 0) which now sits 0.1 from a picked centre; then (0, 0.2)
    assert idx.tolist() == [2, 3, 4]
    assert dist.tolist() == pytest.approx([10.1, 8.0, 0.2], rel=1e-4)
    # tiny chunks give the same answer (distances to the labelled set are computed in chunks)
    idx2, _ = kcenter_greedy(pool, labelled, 3, chunk_bytes=1)
    assert idx2.tolist() == idx.tolist()


def test_margin_kmeans_spreads_the_batch_over_clusters():
    # rows 0-3: near-duplicates torn between classes 0 and 1 (the smallest margins); rows 4-5: torn between
    # 1 and 2 elsewhere in feature space; rows 6-9: confident
    P = np.array([[0.50, 0.50, 0.0]] * 4 + [[0.0, 0.45, 0.55]] * 2 + [[0.95, 0.05, 0.0]] * 4)
    X = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [0.01, 0.01], [5.0, 5.0], [5.0, 5.01],
                  [9, 0], [9, 0.1], [0, 9], [0.1, 9]])
    plain, _ = select("margin", 2, proba=P)
    assert set(plain.tolist()) <= {0, 1, 2, 3}  # plain margin: two near-duplicates
    idx, scores = select("margin-kmeans", 2, proba=P, features=X, seed=0)
    assert len(idx) == 2 and idx[0] in (0, 1, 2, 3) and idx[1] in (4, 5)  # one per cluster, most uncertain first
    assert scores[0] >= scores[1]
    with pytest.raises(ConfigError, match="margin-kmeans"):
        select("margin-kmeans", 2, proba=P)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ConfigError, match=r"--strategy 'bald'.*entropy, margin"):
        select("bald", 2, proba=np.full((3, 2), 0.5))


# --------------------------------------------------------------------------- suggest (Python API)
@pytest.mark.parametrize("strategy", ["entropy", "margin", "least-confidence", "margin-kmeans"])
def test_uncertainty_strategies_put_ambiguous_images_first(labelled, pool, strategy):
    rows = suggest(labelled, pool["dir"], budget=4, strategy=strategy, method=METHOD)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert {Path(r["path"]).name for r in rows[:2]} == {p.name for p in pool["ambiguous"]}
    # the model hesitates between red and green on them
    assert {rows[0]["predicted"], rows[1]["predicted"]} <= {"red", "green"}
    assert all(r["probability"] < 0.9 for r in rows[:2])
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"] >= rows[3]["score"]
    assert rows.pool_size == 11 and rows.n_labelled == 18 and rows.strategy == strategy


def test_coreset_picks_far_away_images_first_and_skips_duplicates(labelled, pool):
    rows = suggest(labelled, pool["novel_dir"], budget=13, strategy="coreset", method=METHOD)
    names = [Path(r["path"]).name for r in rows]
    assert names[0] == pool["novel"].name
    # then the images unlike anything labelled (the in-between colour), before any ordinary one ...
    assert set(names[1:3]) == {p.name for p in pool["ambiguous"]}
    # ... and the exact copy of the first pick last: once its twin is picked it adds nothing
    scores = [r["score"] for r in rows]
    assert names[-1] == "novel_white_copy.png" and scores[-1] < 0.01 * scores[0]  # ~0 up to float32 rounding
    assert scores == sorted(scores, reverse=True) and scores[0] > 2 * scores[3]


def test_random_suggestions_depend_on_the_seed_only(labelled, pool):
    a = [r["path"] for r in suggest(labelled, pool["dir"], 5, "random", METHOD, seed=1)]
    b = [r["path"] for r in suggest(labelled, pool["dir"], 5, "random", METHOD, seed=1)]
    assert a == b and len(set(a)) == 5


def test_pool_images_already_labelled_are_left_out(labelled, pool):
    ds_img = sorted((labelled / "red").iterdir())[0]
    rows = suggest(labelled, [*pool["clear"], ds_img], budget=9, strategy="entropy", method=METHOD)
    assert str(ds_img) not in [r["path"] for r in rows]
    assert rows.pool_size == 9 and any("already in DATA" in n for n in rows.notes)


# --------------------------------------------------------------------------- the CLI
def test_cli_writes_csv_and_montage_and_touches_no_user_file(tmp_path, labelled, pool, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # long temporary paths would otherwise fold inside the table's path cells
    before = _snapshot(labelled, pool["dir"], pool["novel_dir"])
    out = tmp_path / "next"
    rc, stdout, err = _run(["active", str(labelled), "--pool", str(pool["dir"]), "--budget", "3",
                            "--strategy", "margin", "--method", METHOD, "--out", str(out)])
    assert rc == 0, err
    assert "label next" in stdout and "ambiguous_" in stdout and "montage.png" in stdout
    with open(out / "suggestions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["rank", "path", "score", "predicted", "probability"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert {Path(r[1]).name for r in rows[1:3]} == {p.name for p in pool["ambiguous"]}
    assert all(r[3] in ("red", "green", "blue") and 0 <= float(r[4]) <= 1 and float(r[2]) > 0 for r in rows[1:])
    with Image.open(out / "montage.png") as im:
        assert im.format == "PNG" and im.width == 3 * (96 + 8) and im.height == 96 + 30 + 8
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # thumbnails drawn, not a blank sheet
    assert _snapshot(labelled, pool["dir"], pool["novel_dir"]) == before  # nothing written into or changed in DATA / --pool
    assert sorted(p.name for p in out.iterdir()) == ["montage.png", "suggestions.csv"]


def test_cli_json_and_explicit_suggest_verb(tmp_path, labelled, pool):
    rc, stdout, err = _run(["active", "suggest", str(labelled), "--pool", str(pool["novel_dir"]), "--budget", "2",
                            "--strategy", "coreset", "--method", METHOD, "--out", str(tmp_path / "o"), "--json"])
    assert rc == 0, err
    doc = json.loads(stdout)
    assert doc["strategy"] == "coreset" and len(doc["rows"]) == 2
    assert Path(doc["rows"][0]["path"]).name == pool["novel"].name
    assert Path(doc["rows"][1]["path"]).name != "novel_white_copy.png"
    assert set(doc["files"]) == {"csv", "montage"}


def test_cli_simulate_writes_curves_and_plot(tmp_path, labelled):
    data = write_colour_dataset(tmp_path / "sim", n_per_class=12, seed=2)
    before = _snapshot(data)
    out = tmp_path / "sim-out"
    rc, stdout, err = _run(["active", "simulate", str(data), "--rounds", "2", "--per-round", "3", "--initial", "6",
                            "--seeds", "2", "--strategies", "entropy,coreset,margin-kmeans", "--method", METHOD,
                            "--val", "0.3",
                            "--out", str(out)])
    assert rc == 0, err
    assert "gain over random" in stdout
    doc = json.loads((out / "simulation.json").read_text())
    assert doc["n_labels"] == [6, 9, 12]
    assert list(doc["curves"]) == ["entropy", "coreset", "margin-kmeans", "random"]  # random added as the baseline
    for curves in doc["curves"].values():
        assert len(curves) == 2 and all(len(c) == 3 and all(0 <= a <= 1 for a in c) for c in curves)
    assert doc["seeds"] == [0, 1]
    with open(out / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2 * 3 and set(rows[0]) == {"strategy", "seed", "round", "n_labels", "accuracy"}
    with Image.open(out / "simulation.png") as im:
        assert im.format == "PNG" and im.width > 300
    assert _snapshot(data) == before


def test_simulate_extracts_features_once_and_is_reproducible(tmp_path, monkeypatch):
    from imgclass.models import FeaturePipeline

    data = write_colour_dataset(tmp_path / "sim", n_per_class=10, seed=4)
    calls = []
    real = FeaturePipeline.features

    def counting(self, X, description="features"):
        calls.append(len(X))
        return real(self, X, description)

    monkeypatch.setattr(FeaturePipeline, "features", counting)
    kw = dict(strategies=["margin"], rounds=3, per_round=2, initial=4, init="random", seeds=[5], method=METHOD, val=0.3)
    res = simulate(data, **kw)
    assert calls == [30]  # train + val, once, for every strategy, seed and round
    assert res.strategies == ["margin", "random"] and res.n_labels == [4, 6, 8, 10]
    assert len(res.curves["margin"]) == 1 and len(res.curves["margin"][0]) == 4
    assert res.accuracy_at(10, "margin") == res.mean("margin")[-1]
    assert simulate(data, **kw).curves == res.curves
    assert {r["strategy"] for r in res.summary()} == {"margin", "random"}


# --------------------------------------------------------------------------- user errors
def _flat(tmp_path) -> Path:
    d = tmp_path / "unlabelled"
    for i in range(4):
        _save(d, f"img{i}", RED, seed=i)
    return d


ERRORS = {
    "empty pool": (lambda t, lab, pool: ["active", str(lab), "--pool", str((t / "empty").mkdir() or t / "empty"),
                                         "--budget", "2"], ("--pool", "no images")),
    "pool smaller than budget": (lambda t, lab, pool: ["active", str(lab), "--pool", str(pool["dir"]), "--budget", "50"],
                                 ("--budget 50", "only 11 images", "at most 11")),
    "missing pool": (lambda t, lab, pool: ["active", str(lab), "--pool", str(t / "nope"), "--budget", "2"],
                     ("--pool", "no such folder")),
    "unknown strategy": (lambda t, lab, pool: ["active", str(lab), "--pool", str(pool["dir"]), "--budget", "2",
                                               "--strategy", "bald"], ("--strategy 'bald'", "coreset")),
    "data without labels": (lambda t, lab, pool: ["active", str(_flat(t)), "--pool", str(pool["dir"]), "--budget", "2"],
                            ("has no labels",)),
    "one class only": (lambda t, lab, pool: ["active", str(write_colour_dataset(t / "one", 4, classes={"red": RED})),
                                             "--pool", str(pool["dir"]), "--budget", "2"], ("too few labels",)),
    "deep method": (lambda t, lab, pool: ["active", str(lab), "--pool", str(pool["dir"]), "--budget", "2",
                                          "--method", "lite0"], ("--method lite0", "FEATURES+CLASSIFIER")),
    "budget zero": (lambda t, lab, pool: ["active", str(lab), "--pool", str(pool["dir"]), "--budget", "0"],
                    ("--budget 0",)),
    "simulate: schedule too long": (lambda t, lab, pool: ["active", "simulate", str(lab), "--rounds", "5",
                                                          "--per-round", "10", "--method", METHOD],
                                    ("--rounds 5", "lower them")),
    "simulate: unknown strategy": (lambda t, lab, pool: ["active", "simulate", str(lab), "--strategies", "margin,foo"],
                                   ("--strategies 'foo'",)),
    "simulate: bad init": (lambda t, lab, pool: ["active", "simulate", str(lab), "--init", "kmeanz"], ("--init",)),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_with_exit_2(case, tmp_path, labelled, pool):
    make, needles = ERRORS[case]
    argv = make(tmp_path, labelled, pool)
    before = _snapshot(labelled, pool["dir"])
    rc, out, err = _run([*argv, "--out", str(tmp_path / "out")] if "--out" not in argv else argv)
    _one_line_error(rc, out, err, *needles)
    assert _snapshot(labelled, pool["dir"]) == before


def test_api_errors_have_the_right_types(tmp_path, labelled, pool):
    with pytest.raises(ConfigError, match="--budget 12"):
        suggest(labelled, pool["dir"], budget=12, method=METHOD)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="--pool"):
        suggest(labelled, empty, budget=1, method=METHOD)
    with pytest.raises(DataError, match="already in DATA"):
        suggest(labelled, labelled, budget=1, method=METHOD)


@pytest.mark.subprocess
def test_help_has_examples_and_stays_light():
    for argv in (["active", "--help"], ["active", "suggest", "--help"], ["active", "simulate", "--help"]):
        rc, out, _ = _run(argv)
        assert rc == 0 and "Example" in out, argv
    assert "simulate" in _run(["active", "--help"])[1]
    import subprocess
    import sys

    code = ("import sys; from imgclass.cli import main; main(['active', '--help']); main(['active', 'simulate', '--help']);"
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_strategies_table_matches_the_cli_help():
    from imgclass.cli import cmd_active

    for name in active.STRATEGIES:
        assert name in cmd_active.STRATEGY_NAMES
