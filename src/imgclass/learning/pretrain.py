"""``pretrain``: a self-supervised run (``selfsup``) from a folder of images to a run folder that works as a backbone name."""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, figure_png
from ..errors import ConfigError, DataError
from ..features.backbones import pretrain_test_size
from .selfsup.bank import _view_bank
from .selfsup.config import CLUSTER_METHODS, NEEDS_WEIGHTS, PretrainConfig
from .selfsup.heads import _ssl_net
from .selfsup.io import _check_backbone, init_backbone, read_backbone_info, save_backbone
from .selfsup.losses import mine_neighbors
from .selfsup.trainer import SelfSupervisedTrainer


@dataclass
class PretrainResult:
    """What ``pretrain`` returns. ``backbone`` (the run directory) is usable as a backbone name."""

    run_dir: Path
    backbone: str
    method: str
    arch: str
    img_size: int
    n_images: int
    epochs: int
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: int | None = None  # the epoch a resumed run continued after
    arch_input_size: int | None = None  # the architecture's default input size (fine-tuning uses it unless told)

    @property
    def losses(self) -> list[float]:
        return [r["train_loss"] for r in self.history]


def pretrain(data: Any = None, method: str | None = None, backbone: str | None = None, *, epochs: int | None = None,
             batch_size: int | None = None, img_size: int | None = None, out: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, seed: int | None = None, n_jobs: int | None = None,
             max_pixels: int | None = None, log: Callable[[str], Any] = lambda m: None,
             on_epoch: Callable[[dict], Any] | None = None, overwrite: bool = False, **options: Any) -> PretrainResult:
    """Pretrain ``backbone`` (default ``smallcnn``) on the images of ``data`` (a folder, CSV, JSONL or
    ``ImageDataset``; labels, if any, are ignored) with ``method`` (``simclr`` (default), ``byol``,
    ``rotation``, ``scan``); write the run directory
    ``out`` (default ``runs/<data>-<method>-<backbone>``) with ``config.yaml``, ``metrics.jsonl``,
    ``log.txt``, ``checkpoints/last.pt``, ``plots/training_curves.png`` and the backbone files.

    ``options`` are ``PretrainConfig`` fields (``lr``, ``temperature``, ``view_size``, ...). ``log``
    receives progress lines; ``on_epoch`` each epoch's record once it is checkpointed and logged.
    ``resume="runs/X"`` continues an interrupted run after its last finished epoch, with its stored
    options (options given again must agree with them); a finished run is not trained again.
    """
    from ..data import ImageDataset, load_dataset
    from ..training.run import RunDir

    given = {"epochs": epochs, "batch_size": batch_size, "img_size": img_size, "seed": seed, **options}
    if resume is not None:
        return _resume(Path(resume), data, method, backbone, given, n_jobs, max_pixels, log, on_epoch)
    if data is None:
        raise ConfigError("pretrain: give DIR (a folder of images) or --resume RUN")
    cfg = PretrainConfig.for_method(method or "simclr", backbone=backbone or "smallcnn", **given)
    _, source, from_run = _check_backbone(cfg.backbone)  # a bad name fails before anything is written
    if from_run is None and source not in ("imagenet", "hub"):
        if cfg.unfreeze is not None:
            raise ConfigError(f"--unfreeze {cfg.unfreeze} keeps the first blocks of {cfg.backbone} as they are, "
                              f"which needs trained weights: use --backbone {cfg.backbone}@imagenet or an earlier "
                              "pretrain run")
        if cfg.method in NEEDS_WEIGHTS:
            what = "finds each image's neighbours" if cfg.method == "scan" else "takes its first clusters from k-means"
            raise ConfigError(f"--method {cfg.method} {what} with the features of {cfg.backbone}, which needs trained "
                              f"weights: use --backbone {cfg.backbone}@imagenet or an earlier pretrain run (e.g. "
                              f"--method {'simclr' if cfg.method == 'scan' else 'scan'})")
    ds = data if isinstance(data, ImageDataset) else load_dataset(data)
    name = Path(os.fspath(data)).name if not isinstance(data, ImageDataset) else ds.name
    run = RunDir.create(out, hint=f"{name}-{method}-{Path(cfg.backbone).name}", overwrite=overwrite,
                        remedy="pass --resume to continue it, --overwrite to replace it, or choose another --out")
    run.write_config({"command": "pretrain", "data": os.path.abspath(data) if not isinstance(data, ImageDataset)
                      else ds.name, "pretrain": cfg.to_dict(), "n_jobs": n_jobs, "max_pixels": max_pixels,
                      "data_fingerprint": ds.fingerprint(), "platform": platform.platform()})
    run.log(f"pretrain {cfg.backbone} with {cfg.method} on {len(ds)} images")
    return _fit(run, ds, cfg, n_jobs=n_jobs, max_pixels=max_pixels, resume=False, log=log, on_epoch=on_epoch)


def _resume(path: Path, data, method, backbone, given, n_jobs, max_pixels, log, on_epoch) -> PretrainResult:
    import yaml

    from ..data import load_dataset
    from ..training.run import RunDir

    cfg_file = path / "config.yaml"
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run directory; give the --out folder of an earlier "
                          "'imgclass pretrain'")
    if not cfg_file.is_file():
        raise ConfigError(f"--resume {path}: no config.yaml there; give the --out folder of an earlier 'imgclass pretrain'")
    stored = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    if stored.get("command") != "pretrain" or "pretrain" not in stored:
        raise ConfigError(f"--resume {path}: not an 'imgclass pretrain' run (a training run resumes with "
                          "'imgclass train --resume')")
    cfg = PretrainConfig.from_dict(stored["pretrain"])
    asked = {"method": method, "backbone": backbone, **given}
    clash = [f"--{k.replace('_', '-')} {v} (the run has {getattr(cfg, k)})" for k, v in asked.items()
             if v is not None and hasattr(cfg, k) and getattr(cfg, k) != v]
    if data is not None and os.path.abspath(os.fspath(data)) != stored.get("data"):
        clash.append(f"DIR {data} (the run has {stored.get('data')})")
    if clash:
        raise ConfigError(f"--resume {path} continues with the run's own options; drop {', '.join(clash)} "
                          "(or start a new run with --out)")
    ds = load_dataset(stored["data"])
    if stored.get("data_fingerprint") and ds.fingerprint() != stored["data_fingerprint"]:
        log(f"warning: the images in {stored['data']} changed since the run started; continuing on the current ones")
    run = RunDir.open(path)  # refused while another process writes the run
    run.log("resume")
    return _fit(run, ds, cfg, n_jobs=n_jobs if n_jobs is not None else stored.get("n_jobs"),
                max_pixels=max_pixels if max_pixels is not None else stored.get("max_pixels"), resume=True, log=log,
                on_epoch=on_epoch)


def _fit(run, ds, cfg: PretrainConfig, *, n_jobs, max_pixels, resume: bool, log, on_epoch=None) -> PretrainResult:
    import torch

    from ..data.decode import DEFAULT_MAX_PIXELS
    from ..features import decode_to_tensor
    from ..transforms import Preprocess

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net, arch, bcfg = init_backbone(cfg.backbone, cfg.seed)
    size = int(cfg.img_size or bcfg.input_size)
    ckpt = run.path / "checkpoints"
    done = _finished_checkpoint(ckpt / "last.pt", cfg.epochs) if resume else None
    if done is not None:  # nothing to train: no need to decode the images again
        log(f"resumed from {ckpt / 'last.pt'} after epoch {done['epoch']} (finished: nothing to train)")
        model = _ssl_net(net, cfg)
        model.load_state_dict(done["model"])
        n = (read_backbone_info(run.path).get("images") if (run.path / "backbone.json").exists() else None) or len(ds)
        return _finish(run, model, arch, size, bcfg, cfg, ds, done["epoch"], done["history"], n, [], done["epoch"])
    pre = Preprocess(size=size, resize="crop", interpolation=bcfg.interpolation, mean=bcfg.mean, std=bcfg.std)
    x, ok, skipped = decode_to_tensor(ds.sources, pre, n_jobs=n_jobs, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                                      description="decode")
    # known labels never train; SCAN and self-labelling only report against them, when every image has one
    truth = ds.targets[ok] if ds.is_labelled and ds.targets.ndim == 1 else None
    truth = truth if truth is not None and (truth >= 0).all() else None
    if skipped:
        log(f"skipped {len(skipped)} unreadable images")
        run.log(f"skipped {len(skipped)} unreadable images: " + "; ".join(f"{p}: {r}" for p, r in skipped[:50]))
    if len(x) < 2:
        raise DataError(f"{ds.name}: fewer than two readable images; self-supervised pretraining needs many")
    if cfg.method in CLUSTER_METHODS and cfg.clusters > len(x):
        raise ConfigError(f"--clusters {cfg.clusters}: {ds.name} has only {len(x)} readable images; choose at most "
                          f"{len(x)}")

    def record(rec):
        run.log_metrics({"split": "train", **rec})
        run.log(f"epoch {rec['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float)))
        if on_epoch is not None:
            on_epoch(rec)

    tail = None
    if cfg.unfreeze is not None:
        _, _, from_run = _check_backbone(cfg.backbone)
        reuse = [ckpt] + ([Path(from_run) / "checkpoints"] if from_run is not None else [])
        x, tail = _view_bank(net, x, cfg, bcfg, lambda m: (log(m), run.log(m)), keep=ckpt, reuse=reuse)
    trainer = SelfSupervisedTrainer(_ssl_net(net, cfg), x, cfg, bcfg.mean, bcfg.std, ckpt_dir=ckpt, log=log,
                                    on_epoch=record, tail=tail)
    if cfg.method == "scan":
        trainer.neighbors = _neighbors(run, trainer, cfg, truth, resume, log)
    if cfg.method == "selflabel":
        trainer.truth = truth
        if not (resume and (ckpt / "last.pt").exists()):  # a resumed run takes its classifier from the checkpoint
            labels = trainer.init_clusters()
            line = f"self-labelling starts from k-means into {cfg.clusters} clusters of the starting features"
            if truth is not None:
                from .cluster.metrics import clustering_metrics

                m = clustering_metrics(np.asarray(truth), labels)
                line += f" (ACC {m['acc']:.3f}, NMI {m['nmi']:.3f} against the known labels, not used)"
            log(line)
            run.log(line)
    resumed_from = None
    if resume:
        if (ckpt / "last.pt").exists():
            trainer.load_checkpoint(ckpt / "last.pt")
            resumed_from = trainer.epoch
            log(f"resumed from {ckpt / 'last.pt'} after epoch {trainer.epoch}")
        else:
            log(f"no checkpoint in {ckpt} yet: starting from epoch 1")
    trainer.fit()
    return _finish(run, trainer.model, arch, size, bcfg, cfg, ds, trainer.epoch, trainer.history, len(x), skipped,
                   resumed_from)

def _neighbors(run, trainer: SelfSupervisedTrainer, cfg: PretrainConfig, truth, resume: bool, log):
    """SCAN's ``(n, k)`` nearest neighbours in the starting features, mined once and kept in the run
    (``checkpoints/neighbors.npy``): a resumed run trains on the neighbours of the start, not on ones
    mined again with its half-trained network."""
    import io
    import time

    import torch

    path = run.path / "checkpoints" / "neighbors.npy"
    n = len(trainer.train.x)
    if resume and path.exists():
        nb = np.load(path, allow_pickle=False)
        if nb.shape[0] == n:
            return torch.from_numpy(nb)
        log(f"{path}: kept for {nb.shape[0]} images, now {n}; mining the neighbours again")
    k = min(cfg.neighbors, n - 1)
    t0 = time.perf_counter()
    nb = mine_neighbors(trainer.features(), k)
    buf = io.BytesIO()
    np.save(buf, nb.numpy(), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    line = f"neighbours: {k} per image from the starting features in {time.perf_counter() - t0:.0f} s"
    if truth is not None:
        t = torch.as_tensor(truth)
        line += f"; they share the image's label {(t[nb] == t[:, None]).float().mean().item():.3f} of the time (labels not used)"
    log(line)
    run.log(line)
    return nb


def _finished_checkpoint(path: Path, epochs: int) -> dict | None:
    """The checkpoint at ``path`` when it holds all ``epochs`` (weights-only load), else ``None``."""
    import torch

    if not path.exists():
        return None
    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc}); start a new run instead of --resume") from None
    return st if st.get("epoch", 0) >= epochs else None


def _finish(run, model, arch, size, bcfg, cfg, ds, epoch, history, n_images, skipped, resumed_from) -> PretrainResult:
    """Write the backbone files and the loss plot; the result."""
    import torch

    from ..features.backbones import backbone_config

    model = model.to(memory_format=torch.contiguous_format)
    config = cfg.to_dict()
    # frozen embeddings are taken at FixRes's test size for the views trained on, where whole images look
    # like the crops did (``features.backbones.fixres_size``)
    save_backbone(run.path, model.backbone, arch, size, bcfg.mean, bcfg.std, bcfg.interpolation,
                  test_size=pretrain_test_size(config, size), method=cfg.method, epochs=epoch, images=n_images,
                  data=ds.name, data_fingerprint=ds.fingerprint(), config=config)
    _plot_losses(run, history, f"{cfg.method} pretraining of {arch} on {ds.name}")
    run.log(f"saved backbone to {run.path} ({arch}, {size} px)")
    return PretrainResult(run_dir=run.path, backbone=str(run.path), method=cfg.method, arch=arch, img_size=size,
                          n_images=n_images, epochs=epoch, history=list(history), skipped=skipped,
                          resumed_from=resumed_from, arch_input_size=backbone_config(arch).input_size)


def _plot_losses(run, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(run.plots_dir / "training_curves.png", figure_png(fig, dpi=100))


__all__ = ["PretrainResult", "pretrain"]
