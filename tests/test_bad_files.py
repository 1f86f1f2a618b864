"""Unreadable images in train / evaluate / predict / data check are skipped, counted and listed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import imgclass
from imgclass.cli import main

MAX_PIXELS = 5000   # the 100x100 "bomb" exceeds it, the 20x20 good images do not


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, make_colour_dataset, make_bad_files):
    base = tmp_path_factory.mktemp("bad")
    data = make_colour_dataset(base / "data", n_per_class=12, size=20, seed=4)
    bad = make_bad_files(data / "red")
    logs: list[str] = []
    model = imgclass.train(data, method="pixels+logreg", out=base / "run", max_pixels=MAX_PIXELS, n_jobs=1,
                           log=logs.append)
    return {"base": base, "data": data, "bad": {k: str(v) for k, v in bad.items()}, "model": model,
            "run": Path(model.run_dir), "logs": logs}


def test_training_succeeds_despite_bad_files(bad_run):
    model = bad_run["model"]
    assert model.classifier_ is not None
    assert model.classes_ == ["blue", "green", "red"]
    assert (bad_run["run"] / "model" / "model.json").exists()
    assert model.meta_["metrics"]["val"]["accuracy"] >= 0.9


def test_bad_files_listed_in_meta(bad_run):
    meta = bad_run["model"].meta_
    skipped = meta["train_skipped"] + meta.get("val_skipped", [])
    assert sorted(p for p, _ in skipped) == sorted(bad_run["bad"].values())
    reasons = dict(skipped)
    assert all(reasons.values())
    assert "empty" in reasons[bad_run["bad"]["zero"]]
    assert "truncated" in reasons[bad_run["bad"]["truncated_jpeg"]]
    assert "exceeds the limit of 5,000" in reasons[bad_run["bad"]["bomb"]]
    if meta["train_skipped"]:   # the caller's log hears about it
        assert any(f"skipped {len(meta['train_skipped'])} unreadable" in m for m in bad_run["logs"])


def test_bad_files_listed_in_report(bad_run):
    html = (bad_run["run"] / "report.html").read_text(encoding="utf-8")
    assert "Skipped files (6)" in html
    section = html[html.index("Skipped files"):]
    for path in bad_run["bad"].values():
        assert Path(path).name in section
    assert "exceeds the limit" in section


def test_bad_files_counted_in_metrics_log(bad_run):
    records = [json.loads(line) for line in (bad_run["run"] / "metrics.jsonl").read_text().splitlines()]
    by_split = {r["split"]: r for r in records}
    meta = bad_run["model"].meta_
    assert by_split["train"]["skipped"] == len(meta["train_skipped"])
    assert by_split["val"]["skipped"] == 6


def test_evaluate_lists_skipped(bad_run):
    ev = imgclass.evaluate(bad_run["model"], bad_run["data"])
    assert sorted(p for p, _ in ev.skipped) == sorted(bad_run["bad"].values())
    assert ev.metrics["n"] == 36
    assert ev.to_dict()["skipped"][0].keys() == {"path", "reason"}


def test_evaluate_from_bundle_lists_unreadable_files(bad_run):
    ev = imgclass.evaluate(bad_run["run"] / "model", bad_run["data"])
    skipped = {p for p, _ in ev.skipped}
    unreadable = {v for k, v in bad_run["bad"].items() if k != "bomb"}
    assert unreadable <= skipped


def test_predict_returns_none_for_bad_files(bad_run):
    model = bad_run["model"]
    good = sorted(str(p) for p in (bad_run["data"] / "green").glob("*.png"))[:2]
    bad = list(bad_run["bad"].values())
    preds = model.predict([good[0], *bad, good[1]])
    assert preds[0].label == "green" and preds[-1].label == "green"
    assert preds[1:-1] == [None] * len(bad)
    errors = dict(model.errors_)
    assert sorted(errors) == sorted(bad)
    assert all(errors.values())
    P = model.predict_proba([good[0], bad[0]])
    assert not np.isnan(P[0]).any() and np.isnan(P[1]).all()


def _unreadable(bad_run):
    return {k: v for k, v in bad_run["bad"].items() if k != "bomb"}


def test_cli_predict_prints_errors_and_exits_0(bad_run, capsys, monkeypatch):
    monkeypatch.chdir(bad_run["base"])
    good = sorted(str(p) for p in (bad_run["data"] / "blue").glob("*.png"))[:2]
    bad = _unreadable(bad_run)
    rc = main(["predict", str(bad_run["run"] / "model"), *good, *bad.values()])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(good) + len(bad)
    error_lines = [ln for ln in lines if "ERROR:" in ln]
    assert len(error_lines) == len(bad)
    for path in bad.values():
        assert any(Path(path).name in ln for ln in error_lines)
    assert sum(1 for ln in lines if re.search(r"\bblue \d{1,3}\.\d%", ln)) == len(good)
    assert f"{len(bad)} of {len(lines)} images could not be read" in err


def test_cli_predict_json_reports_errors(bad_run, capsys):
    bad = _unreadable(bad_run)
    rc = main(["predict", str(bad_run["run"] / "model"), bad["zero"], bad["corrupt"], "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out)
    assert [d["path"] for d in doc] == [bad["zero"], bad["corrupt"]]
    assert all(d["label"] is None and d["error"] for d in doc)


def test_cli_train_warns_about_each_bad_file(bad_run, tmp_path, capsys):
    rc = main(["train", str(bad_run["data"]), "--method", "pixels+logreg", "--max-pixels", str(MAX_PIXELS),
               "--out", str(tmp_path / "run"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert json.loads(out)["metrics"]["accuracy"] >= 0.9
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 6
    for path in bad_run["bad"].values():
        assert any(path in w for w in warnings)


def test_data_check_lists_bad_files(bad_run, capsys):
    rc = main(["data", "check", str(bad_run["data"]), "--max-pixels", str(MAX_PIXELS), "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    rep = json.loads(out)
    bad = {b["path"]: b["reason"] for b in rep["bad_files"]}
    assert sorted(bad) == sorted(f"red/{Path(p).name}" for p in bad_run["bad"].values())
    assert all(bad.values())
    assert rep["images"] == 42
