"""Clustering: well-separated colour images are recovered by every algorithm, k=auto finds k, outputs
are written, unlabelled folders work, named clusters become a loadable bundle, and the CLI reports
user errors in one line with exit code 2."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as _run

import imgclass
from imgclass.errors import ConfigError, DataError
from imgclass.learning.cluster import ALGORITHMS, SELF_K, cluster, cluster_accuracy, cluster_features

FOUR = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "yellow": (210, 210, 30)}
FAST = {"features": "color_hist", "n_jobs": 1}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def colours(tmp_path_factory, make_colour_dataset) -> Path:
    """3 classes (red, green, blue) x 12 images of 16x16 pixels."""
    return make_colour_dataset(tmp_path_factory.mktemp("cl") / "colours", n_per_class=12, size=16, seed=5)


@pytest.fixture(scope="module")
def four(tmp_path_factory, make_colour_dataset) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("cl4") / "four", n_per_class=10, size=16, seed=6, classes=FOUR)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, four) -> Path:
    """The four-colour images copied into one flat folder: nothing is labelled."""
    flat = tmp_path_factory.mktemp("flat") / "flat"
    flat.mkdir()
    for p in four.rglob("*.png"):
        shutil.copy(p, flat / p.name)
    return flat


@pytest.fixture(scope="module")
def kmeans3(colours):
    return cluster(colours, algo="kmeans", k=3, **FAST)


# --------------------------------------------------------------------------- metrics
def test_cluster_accuracy_matches_clusters_to_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(y, np.array([5, 5, 3, 3, 9, 9])) == 1.0  # any ids, one-to-one matching
    assert cluster_accuracy(y, np.array([0, 0, 0, 0, 1, 1])) == pytest.approx(4 / 6)  # merged classes
    assert cluster_accuracy(y, np.array([0, 0, 1, 1, 2, -1])) == pytest.approx(5 / 6)  # noise is an error
    assert cluster_accuracy(y, np.array([0, 1, 2, 3, 4, 5])) == pytest.approx(3 / 6)  # one cluster per class only


# --------------------------------------------------------------------------- recovery
def test_kmeans_recovers_colour_classes(kmeans3, colours):
    res = kmeans3
    assert res.k == 3
    assert len(res.labels_) == len(res.sources) == 36
    assert res.metrics["acc"] == 1.0 and res.metrics["nmi"] == pytest.approx(1.0) and res.metrics["ari"] == 1.0
    assert sorted(res.sizes.values()) == [12, 12, 12]
    # a cluster holds exactly one colour, and cluster 0 is the largest
    for c in range(3):
        assert len(res.top_labels(c)) == 1 and res.top_labels(c)[0][1] == 1.0
    assert res.cluster_centers_.shape == (3, res.embedding_.shape[1])


def test_cluster_features_gives_the_clusters_of_cluster_on_rows_already_computed(kmeans3):
    """What self-labelling starts from: the same L2 -> PCA -> k-means as ``cluster`` on feature rows."""
    X = kmeans3._pipeline.features(list(kmeans3.sources)).X
    assert cluster_accuracy(kmeans3.labels_, cluster_features(X, 3, seed=0)) == 1.0  # cluster() renumbers by size
    other = cluster(kmeans3.sources, algo="kmeans", k=2, dims=5, seed=1, **FAST)
    assert cluster_accuracy(other.labels_, cluster_features(X, 2, dims=5, seed=1)) == 1.0


def test_k_defaults_to_the_number_of_classes(colours):
    res = cluster(colours, algo="agglomerative", **FAST)
    assert res.k == 3
    assert any("number of classes" in n for n in res.notes)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_algorithm_recovers_separated_clusters(algo, colours):
    res = cluster(colours, algo=algo, k=None if algo in SELF_K else 3, **FAST)
    assert res.algo == algo
    assert res.k == 3, (algo, res.sizes)
    assert res.metrics["ari"] >= 0.9, (algo, res.metrics)
    assert set(np.unique(res.labels_)) <= {-1, 0, 1, 2}


def test_same_seed_same_clusters(colours):
    a = cluster(colours, algo="kmeans", k=3, seed=3, **FAST)
    b = cluster(colours, algo="kmeans", k=3, seed=3, **FAST)
    assert np.array_equal(a.labels_, b.labels_)


def test_reductions_none_and_whiten(colours):
    assert cluster(colours, algo="kmeans", k=3, reduce="none", **FAST).metrics["acc"] == 1.0
    res = cluster(colours, algo="kmeans", k=3, dims=5, whiten=True, **FAST)
    assert res.embedding_.shape == (36, 5)
    assert np.allclose(np.linalg.norm(res.embedding_, axis=1), 1.0)  # whitened rows are L2-normalised again
    assert res.metrics["acc"] == 1.0


# --------------------------------------------------------------------------- k = auto
def test_k_auto_silhouette_finds_four_and_writes_the_curve(four, tmp_path):
    res = cluster(four, algo="kmeans", k="auto", k_range=(2, 7), out=tmp_path / "o", **FAST)
    assert res.k == 4
    assert res.k_curve["criterion"] == "silhouette" and res.k_curve["chosen"] == 4
    assert res.k_curve["k"] == [2, 3, 4, 5, 6, 7]
    best = res.k_curve["score"][res.k_curve["k"].index(4)]
    assert best == max(s for s in res.k_curve["score"] if s is not None)
    curve = tmp_path / "o" / "k_curve.png"
    assert curve.read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "o" / "cluster.json").read_text())["k_curve"]["chosen"] == 4


def test_k_auto_bic_for_gmm(four):
    res = cluster(four, algo="gmm", k="auto", k_range=(2, 6), **FAST)
    assert res.k_curve["criterion"] == "bic"
    assert res.k == 4 and res.metrics["ari"] == 1.0


# --------------------------------------------------------------------------- outputs
def test_outputs_csv_montages_map(kmeans3, tmp_path):
    outs = kmeans3.write(tmp_path / "out")
    rows = list(csv.DictReader(open(outs["csv"], encoding="utf-8")))
    assert len(rows) == 36 and list(rows[0]) == ["path", "cluster", "label"]
    by_cluster: dict[str, set] = {}
    for r in rows:
        assert Path(r["path"]).exists()
        by_cluster.setdefault(r["cluster"], set()).add(r["label"])
    assert sorted(by_cluster) == ["0", "1", "2"] and all(len(v) == 1 for v in by_cluster.values())
    montages = sorted((tmp_path / "out" / "montages").iterdir())
    assert [m.name for m in montages] == ["cluster_00.png", "cluster_01.png", "cluster_02.png"]
    from PIL import Image

    for m in montages:
        assert Image.open(m).size[0] > 64  # a sheet of thumbnails, not an empty file
    assert (tmp_path / "out" / "map.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "out" / "k_curve.png").exists()
    doc = json.loads((tmp_path / "out" / "cluster.json").read_text())
    assert doc["metrics"]["acc"] == 1.0 and doc["k"] == 3
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave no temp files


def test_unlabelled_folder(unlabelled, tmp_path):
    res = cluster(unlabelled, algo="kmeans", k_range=(2, 6), out=tmp_path / "u", **FAST)
    assert res.truth is None
    assert res.k == 4  # no labels: k defaults to auto
    assert not {"acc", "nmi", "ari"} & set(res.metrics)
    assert res.metrics["silhouette"] > 0.5
    header = (tmp_path / "u" / "clusters.csv").read_text().splitlines()[0]
    assert header == "path,cluster"
    assert len(list((tmp_path / "u" / "montages").iterdir())) == 4


def test_bad_images_are_skipped_and_listed(tmp_path, make_colour_dataset, make_bad_files):
    data = make_colour_dataset(tmp_path / "withbad", n_per_class=8, size=16, seed=2)
    bad = make_bad_files(data / "red")
    bad["bomb"].unlink()  # a valid image without a pixel limit
    res = cluster(data, algo="kmeans", k=3, **FAST)
    assert len(res.sources) == 24
    assert {Path(p).name for p, _ in res.skipped} == {p.name for k, p in bad.items() if k != "bomb"}
    assert res.metrics["acc"] == 1.0


def test_predict_new_images_goes_to_nearest_cluster(kmeans3, colours, make_colour_dataset, tmp_path):
    new = make_colour_dataset(tmp_path / "new", n_per_class=2, size=16, seed=99)
    pred = kmeans3.predict([str(p) for p in sorted(new.rglob("*.png"))])
    red_cluster = kmeans3.labels_[[i for i, s in enumerate(kmeans3.sources) if "/red/" in s][0]]
    reds = [i for i, p in enumerate(sorted(new.rglob("*.png"))) if p.parent.name == "red"]
    assert all(pred[i] == red_cluster for i in reds)
    assert len(set(pred)) == 3


# --------------------------------------------------------------------------- naming -> classifier
def _labelled_csv(path: Path, items: list[tuple[Path, str]]) -> Path:
    path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in items))
    return path


def test_named_clusters_become_a_loadable_bundle(colours, tmp_path):
    res = cluster(colours, algo="kmeans", k=3, **FAST)
    one_each = [(sorted((colours / c).iterdir())[0], c.upper()) for c in ("red", "green", "blue")]
    model = res.name(_labelled_csv(tmp_path / "few.csv", one_each))
    assert set(res.names_.values()) == {"RED", "GREEN", "BLUE"} and set(res.name_how_.values()) == {"vote"}
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / "estimator.skops").exists()
    loaded = imgclass.load_model(tmp_path / "model")
    images = sorted(str(p) for p in colours.rglob("*.png"))
    preds = loaded.predict(images)
    assert [p.label for p in preds] == [Path(s).parent.name.upper() for s in images]
    P = loaded.predict_proba(images)
    assert P.shape == (36, 3) and np.allclose(P.sum(axis=1), 1.0)
    assert loaded.classes_ == ["BLUE", "GREEN", "RED"]


def test_cluster_without_labelled_member_takes_nearest_name(tmp_path, make_colour_dataset):
    shades = {"red": (200, 40, 40), "orange": (220, 120, 30), "blue": (40, 40, 200), "teal": (30, 130, 190)}
    data = make_colour_dataset(tmp_path / "shades", n_per_class=8, size=12, seed=8, classes=shades)
    res = cluster(data, features="pixels", algo="kmeans", k=4, n_jobs=1)
    assert res.metrics["acc"] == 1.0
    labelled = {str(sorted((data / "red").iterdir())[0]): "warm", str(sorted((data / "blue").iterdir())[0]): "cold"}
    model = res.name(labelled)
    assert model.classes_ == ["cold", "warm"]

    def cluster_of(shade):
        return int(res.labels_[[i for i, s in enumerate(res.sources) if f"/{shade}/" in s][0]])

    assert res.names_[cluster_of("red")] == "warm" and res.name_how_[cluster_of("red")] == "vote"
    assert res.names_[cluster_of("orange")] == "warm" and res.name_how_[cluster_of("orange")] == "nearest"
    assert res.names_[cluster_of("blue")] == "cold" and res.name_how_[cluster_of("blue")] == "vote"
    assert res.names_[cluster_of("teal")] == "cold" and res.name_how_[cluster_of("teal")] == "nearest"
    preds = model.predict(res.sources)
    assert [p.label for p in preds] == ["warm" if res.truth[i] in ("red", "orange") else "cold"
                                        for i in range(len(res.sources))]


def test_naming_from_images_outside_the_clustered_set(colours, make_colour_dataset, tmp_path):
    res = cluster(colours, algo="kmeans", k=3, **FAST)
    other = make_colour_dataset(tmp_path / "other", n_per_class=1, size=16, seed=123)
    model = res.name(other)  # a folder per class, none of its images was clustered
    assert set(res.names_.values()) == {"red", "green", "blue"}
    assert [p.label for p in model.predict([str(other / "green" / "green_00.png")])] == ["green"]


def test_naming_needs_two_classes(kmeans3, colours):
    with pytest.raises(DataError, match="only one class"):
        kmeans3.name({str(sorted((colours / "red").iterdir())[0]): "red"})


# --------------------------------------------------------------------------- CLI
def test_cli_json(colours, tmp_path):
    rc, out, err = _run(["cluster", colours, "--features", "color_hist", "--k", "3", "--out", tmp_path / "c", "--json"])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["k"] == 3 and doc["algo"] == "kmeans"
    assert doc["metrics"]["acc"] == 1.0 and doc["metrics"]["nmi"] == pytest.approx(1.0) and doc["metrics"]["ari"] == 1.0
    assert [c["size"] for c in doc["clusters"]] == [12, 12, 12]
    assert Path(doc["outputs"]["csv"]).exists() and Path(doc["outputs"]["map"]).exists()


def test_cli_text_k_auto(four, tmp_path):
    rc, out, err = _run(["cluster", four, "--features", "color_hist", "--algo", "agglomerative", "--k", "auto",
                         "--k-max", "6", "--out", tmp_path / "a"])
    assert rc == 0, err
    assert "k = 4" in out and "k by silhouette" in out and "4*" in out
    assert "ACC 1.0000" in out
    assert (tmp_path / "a" / "k_curve.png").exists()


def test_cli_name_clusters_save_model_then_predict(colours, tmp_path):
    few = _labelled_csv(tmp_path / "few.csv", [(sorted((colours / c).iterdir())[1], c) for c in ("red", "green", "blue")])
    rc, out, err = _run(["cluster", colours, "--features", "color_hist", "--name-clusters", few,
                         "--save-model", tmp_path / "m", "--out", tmp_path / "c"])
    assert rc == 0, err
    assert "(vote)" in out
    assert "name" in (tmp_path / "c" / "clusters.csv").read_text().splitlines()[0]
    img = sorted((colours / "green").iterdir())[5]
    rc, out, err = _run(["predict", tmp_path / "m", img, "--top-k", "1"])
    assert rc == 0, err
    assert out.split()[1] == "green"
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["clustering"]["algo"] == "kmeans" and meta["method"] == "color_hist+kmeans-clusters"


ERRORS = {
    "unknown algo": (["--algo", "foo"], "--algo foo"),
    "k too large": (["--k", "99"], "--k 99"),
    "k not a number": (["--k", "many"], "--k many"),
    "k for dbscan": (["--algo", "dbscan", "--k", "3"], "finds the number of clusters itself"),
    "k for hdbscan": (["--algo", "hdbscan", "--k", "3"], "finds the number of clusters itself"),
    "bad reduce": (["--reduce", "tsne"], "--reduce tsne"),
    "bad param": (["--param", "eps"], "--param eps"),
    "unknown sklearn param": (["--param", "bogus=1"], "bogus"),
    "save-model without names": (["--save-model", "m"], "--save-model needs --name-clusters"),
    "labelled file missing": (["--name-clusters", "missing.csv"], "missing.csv"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_cli_user_errors_are_one_line_exit_2(case, colours, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, needle = ERRORS[case]
    rc, out, err = _run(["cluster", colours, "--features", "color_hist", *extra, "--out", tmp_path / "o"])
    assert rc == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgclass: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_cli_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(["cluster", tmp_path / "empty", "--features", "color_hist"])
    assert rc == 2 and "no images found" in err and len(err.strip().splitlines()) == 1


def test_api_errors_name_the_option(colours):
    with pytest.raises(ConfigError, match="--k 1"):
        cluster(colours, algo="kmeans", k=1, **FAST)
    with pytest.raises(ConfigError, match="--dims 0"):
        cluster(colours, dims=0, **FAST)


def test_umap_missing_says_how_to_install(colours):
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install umap-learn"):
            cluster(colours, algo="kmeans", k=3, reduce="umap", **FAST)
    else:
        res = cluster(colours, algo="kmeans", k=3, reduce="umap", dims=2, **FAST)
        assert res.metrics["acc"] == 1.0
