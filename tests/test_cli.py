"""The command line: help, one-line errors with exit code 2, and a train → evaluate → predict session."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error as _assert_one_line_error
from conftest import run_cli as _run

from imgclass.cli import main

COMMANDS = [["train"], ["evaluate"], ["predict"], ["compare"], ["methods"], ["data", "check"], ["cluster"],
            ["active"], ["active", "suggest"], ["active", "simulate"], ["pretrain"]]


# --------------------------------------------------------------------------- help
def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out
    for cmd in ("train", "evaluate", "predict", "compare", "methods", "data"):
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_command_help_has_example(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out
    assert "Example" in out


def test_version(capsys):
    import imgclass

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"imgclass {imgclass.__version__}"


# --------------------------------------------------------------------------- errors


@pytest.fixture
def some_image(colour_folder):
    return str(sorted((colour_folder / "red").iterdir())[0])


ERROR_CASES = {
    "missing data folder": lambda t, d, img, b: ["train", str(t / "no_such_folder"), "--out", str(t / "r")],
    "bad --method": lambda t, d, img, b: ["train", str(d), "--method", "foo+svm", "--out", str(t / "r")],
    "incomplete --method": lambda t, d, img, b: ["train", str(d), "--method", "hog", "--out", str(t / "r")],
    "bad --task": lambda t, d, img, b: ["train", str(d), "--task", "bogus", "--out", str(t / "r")],
    "binary on 3 classes": lambda t, d, img, b: ["train", str(d), "--task", "binary", "--out", str(t / "r")],
    "predict: not a bundle": lambda t, d, img, b: ["predict", str(d), img],
    "evaluate: not a bundle": lambda t, d, img, b: ["evaluate", str(t), str(d)],
    "evaluate: missing bundle": lambda t, d, img, b: ["evaluate", str(t / "nope"), str(d)],
    "compare: bad method": lambda t, d, img, b: ["compare", str(d), "--methods", "pixels+logreg,hog+nope"],
    "data check: missing": lambda t, d, img, b: ["data", "check", str(t / "nowhere")],
    "predict: missing image": lambda t, d, img, b: ["predict", str(b), str(t / "ghost.png")],
    "evaluate: unknown class": lambda t, d, img, b: ["evaluate", str(b), str(t / "odd")],
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_line_exit_2(case, tmp_path, colour_folder, some_image, trained, make_colour_dataset):
    make_colour_dataset(tmp_path / "odd", n_per_class=1, size=8, classes={"red": (9, 9, 9), "mauve": (1, 1, 1)})
    argv = ERROR_CASES[case](tmp_path, colour_folder, some_image, trained["bundle"])
    _assert_one_line_error(*_run(argv))


def test_error_message_names_the_problem(tmp_path, colour_folder, trained):
    rc, _, err = _run(["train", str(tmp_path / "no_such_folder")])
    assert "no_such_folder" in err
    rc, _, err = _run(["train", str(colour_folder), "--method", "foo+svm", "--out", str(tmp_path / "r")])
    assert "'foo'" in err
    rc, _, err = _run(["predict", str(colour_folder), str(colour_folder)])
    assert "not a model bundle" in err
    rc, _, err = _run(["predict", str(trained["bundle"]), str(tmp_path / "ghost.png")])
    assert "ghost.png" in err


@pytest.mark.parametrize("argv", [["train", "x", "--bogus"], ["--nope"], ["predict", "--top-k", "many", "m", "x"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(argv):
    rc, out, err = _run(argv)
    assert rc == 2
    assert "Traceback" not in err


def test_debug_shows_traceback(tmp_path):
    from imgclass.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", "train", str(tmp_path / "missing")])


# --------------------------------------------------------------------------- a full session
@pytest.fixture(scope="module")
def session(tmp_path_factory, make_colour_dataset):
    base = tmp_path_factory.mktemp("cli")
    data = make_colour_dataset(base / "photos", n_per_class=12, size=20, seed=11)
    run = base / "run"
    rc, out, err = _run(["train", str(data), "--method", "pixels+logreg", "--out", str(run), "--jobs", "1",
                         "--json"])
    return {"base": base, "data": data, "run": run, "model": run / "model", "train": (rc, out, err)}


def test_train_json(session):
    rc, out, err = session["train"]
    assert rc == 0, err
    doc = json.loads(out)
    assert Path(doc["run_dir"]) == session["run"]
    assert Path(doc["model"]) == session["model"]
    assert doc["metrics"]["accuracy"] >= 0.9


def test_run_dir_layout(session):
    run = session["run"]
    for rel in ("config.yaml", "split.json", "metrics.jsonl", "model/model.json", "model/estimator.skops",
                "report.html", "metrics.json", "predictions.csv", "plots/confusion.png"):
        assert (run / rel).is_file(), rel
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "pixels+logreg" and cfg["seed"] == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["splits"]["train"]) + len(split["splits"]["val"]) == 36
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}


def test_train_text_output(session, tmp_path):
    rc, out, err = _run(["train", str(session["data"]), "--method", "pixels+knn", "--out", str(tmp_path / "r")])
    assert rc == 0, err
    assert "trained pixels+knn on 3 classes (multiclass)" in out
    assert "accuracy" in out
    assert (tmp_path / "r" / "model" / "model.json").exists()


def test_train_into_existing_folder_is_refused_not_renamed(session, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    rc, out, err = _run(["train", str(session["data"]), "--method", "pixels+logreg", "--out", str(tmp_path / "r"),
                         "--json"])
    _assert_one_line_error(rc, out, err, str(tmp_path / "r"), "already holds", "--overwrite", "--resume")
    assert not (tmp_path / "r-2").exists()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["keep.txt"]


def test_evaluate_json(session, tmp_path):
    rc, out, err = _run(["evaluate", str(session["model"]), str(session["data"]), "--json",
                         "--out", str(tmp_path / "ev")])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["task"] == "multiclass"
    assert doc["classes"] == ["blue", "green", "red"]
    assert doc["metrics"]["n"] == 36
    assert doc["metrics"]["accuracy"] >= 0.9
    assert doc["skipped"] == []
    assert (tmp_path / "ev" / "report.html").exists()


def test_evaluate_text(session):
    rc, out, err = _run(["evaluate", str(session["model"]), str(session["data"])])
    assert rc == 0, err
    assert "accuracy" in out and "per class" in out
    for c in ("blue", "green", "red"):
        assert c in out


def test_predict_json(session):
    imgs = sorted(str(p) for p in (session["data"] / "green").iterdir())[:3]
    rc, out, err = _run(["predict", str(session["model"]), *imgs, "--json", "--top-k", "2"])
    assert rc == 0, err
    doc = json.loads(out)
    assert isinstance(doc, list) and len(doc) == 3
    for item, path in zip(doc, imgs):
        assert item["path"] == path
        preds = item["top"]
        assert len(preds) == 2
        assert all(set(p) == {"label", "probability"} for p in preds)
        assert preds[0]["label"] == "green"
        assert preds[0]["probability"] >= preds[1]["probability"]
        assert 0.0 <= preds[1]["probability"] <= preds[0]["probability"] <= 1.0


def test_predict_text_lines(session, monkeypatch):
    monkeypatch.chdir(session["base"])
    rc, out, err = _run(["predict", str(session["model"]), str(session["data"] / "red"), "-k", "1"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 12
    pattern = re.compile(r"^(?P<name>\S+)\s{2,}(?P<label>blue|green|red) (?P<pct>\d{1,3}\.\d)%$")
    for line in lines:
        m = pattern.match(line)
        assert m, line
        assert m["name"].startswith("photos/red/")     # relative to the working directory
        assert m["label"] == "red"
        assert 0.0 <= float(m["pct"]) <= 100.0


def test_predict_default_top_3(session):
    img = str(sorted((session["data"] / "blue").iterdir())[0])
    rc, out, _ = _run(["predict", str(session["model"]), img])
    assert rc == 0
    assert len(re.findall(r"(?:blue|green|red) \d{1,3}\.\d%", out)) == 3


def test_compare_json(session):
    rc, out, err = _run(["compare", str(session["data"]), "--methods", "pixels+logreg,pixels+knn",
                         "--val-split", "0.3", "--json"])
    assert rc == 0, err
    rows = json.loads(out)
    assert sorted(r["method"] for r in rows) == ["pixels+knn", "pixels+logreg"]
    for r in rows:
        assert {"method", "accuracy", "macro_f1", "fit_s", "predict_ips", "size_bytes"} <= set(r)
        assert "metrics" not in r
        assert r["size_bytes"] > 0
    assert rows[0]["accuracy"] >= rows[1]["accuracy"]


def test_compare_text(session):
    rc, out, err = _run(["compare", str(session["data"]), "-m", "pixels+logreg", "--val-split", "0.3"])
    assert rc == 0, err
    assert "leaderboard" in out and "pixels+logreg" in out


def test_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    specs = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    assert "hog+svm" in specs
    assert "pixels+CLASSIFIER" in specs and "FEATURES+knn" in specs


# --------------------------------------------------------------------------- data check
@pytest.fixture
def pre_split_with_problems(tmp_path, make_colour_dataset):
    root = tmp_path / "pre"
    make_colour_dataset(root / "train", n_per_class=4, size=12, seed=1)
    make_colour_dataset(root / "val", n_per_class=2, size=12, seed=2)
    shutil.copy(root / "train" / "red" / "red_00.png", root / "val" / "red" / "leaked.png")
    (root / "val" / "blue" / "empty.png").write_bytes(b"")
    return root


def test_data_check_json(pre_split_with_problems, capsys):
    assert main(["data", "check", str(pre_split_with_problems), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["images"] == 12 + 6 + 2
    assert rep["task"] == "multiclass"
    assert set(rep["per_split"]) == {"train", "val"}
    assert rep["bad_files"] == [{"path": "val/blue/empty.png", "reason": "empty file (0 bytes)"}]
    assert rep["cross_split_duplicates"] >= 1
    group = next(g for g in rep["duplicates"] if g["cross_split"])
    assert sorted(group["paths"]) == ["train/red/red_00.png", "val/red/leaked.png"]
    assert group["splits"] == ["train", "val"]
    assert group["conflicting_labels"] is False
    assert rep["width"]["min"] == 12 and rep["modes"] == {"RGB": 19}   # the empty file has no mode


def test_data_check_text(pre_split_with_problems, capsys):
    assert main(["data", "check", str(pre_split_with_problems)]) == 0
    out = capsys.readouterr().out
    assert "bad files: 1" in out
    assert "1 groups across splits" in out


# --------------------------------------------------------------------------- real processes
CLI = [sys.executable, "-c", "from imgclass.cli import main; main()"]


@pytest.mark.subprocess
def test_subprocess_methods():
    proc = subprocess.run([*CLI, "methods"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hog+svm" in proc.stdout


@pytest.mark.subprocess
def test_subprocess_error_exit_code(tmp_path):
    proc = subprocess.run([*CLI, "train", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgclass: error:")
    assert not (tmp_path / "runs").exists()


@pytest.mark.subprocess
def test_subprocess_unknown_option():
    proc = subprocess.run([*CLI, "methods", "--bogus"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_console_script_predict(session):
    exe = Path(sys.executable).parent / "imgclass"
    if not exe.exists():
        pytest.skip("console script not installed next to the interpreter")
    img = str(sorted((session["data"] / "green").iterdir())[0])
    proc = subprocess.run([str(exe), "predict", str(session["model"]), img, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["label"] == "green"
