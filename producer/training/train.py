"""The SegFormer training loop (paper section 2.3.3).

AdamW, batch 8, BCED loss, the paper's per-epoch learning-rate schedule and augmentation. Every
epoch ends with a validation pass (loss and the Eq. 4-9 metrics pooled over the validation
set), a ``last`` checkpoint (weights as safetensors + JSON through the segmentation package's
``save_checkpoint``; optimizer, scheduler, AMP scaler, RNG states and history in
``last_state.pt``) and, when the validation mIoU improves, a ``best`` checkpoint. Resuming
restores all of it, and the data order and augmentation are functions of (seed, epoch, index),
so a resumed run ends with the same weights as an uninterrupted one. The weights and the state
are separate files written one after the other, so the state records the sha256 of the weights
it goes with, and a resume refuses a pair from different epochs (a run killed between the two
writes) instead of silently mixing them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import Dataset

from producer.evaluation import Confusion, confusion
from producer.segmentation.checkpoints import (
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
    weights_sha256,
)
from producer.segmentation.model import ID2LABEL, DamageSegmenter
from producer.training.augment import Augmentation
from producer.training.data import (
    DemoTileDataset,
    TileDataset,
    TileRenderer,
    check_disjoint_splits,
)
from producer.training.losses import bced_loss, foreground_logit
from producer.training.schedule import LRSchedule
from producer.writer import atomic_path

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")
#: The smallest square input SegFormer's encoder accepts: the stage-1 patch embedding (7×7,
#: stride 4, padding 3) must leave at least 8×8 pixels for the 8×8 sequence-reduction kernel.
MIN_INPUT = 29
STATE_FILE = "last_state.pt"
#: The weights a resume continues from (saved with ``last_state.pt`` every epoch).
LAST_WEIGHTS = "last.safetensors"
HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in every checkpoint)."""

    out: str
    data: str | None = None
    demo: bool = False
    variant: str = "b2"
    init: str | None = None
    epochs: int = 200
    batch_size: int = 8
    start_lr: float = 1e-5
    peak_lr: float = 1e-4
    final_lr: float = 5e-5
    warmup_epochs: int = 20
    cosine_epochs: int = 80
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    crop: int | None = None
    """Train on random crop × crop parts of the tiles (validation uses whole tiles)."""
    demo_tiles: int = 256
    demo_val_tiles: int = 32
    demo_size: int = 256
    demo_first_seed: int = 0
    demo_val_first_seed: int = 1_000_000
    threads: int | None = None
    pth: bool = False
    max_minutes: float | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """SegformerConfig settings replacing the variant's (tiny models for tests)."""

    def __post_init__(self) -> None:
        if (self.data is None) == (not self.demo):
            raise ValueError("give exactly one of a data folder or --demo")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be >= 1")
        if self.crop is not None and self.crop < MIN_INPUT:
            raise ValueError(f"--crop {self.crop}: must be >= {MIN_INPUT}, the smallest input "
                             "SegFormer's encoder accepts (or left out to train on whole tiles)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: must be >= 1 (or left out for torch's "
                             "default)")

    @property
    def schedule(self) -> LRSchedule:
        """The learning-rate schedule of this run."""
        return LRSchedule(self.start_lr, self.peak_lr, self.final_lr, self.warmup_epochs,
                          self.cosine_epochs)

    def same_run(self, other: TrainConfig) -> list[str]:
        """Fields that differ from ``other`` apart from those a resume may change; paths
        (data, init) are compared resolved, however they were spelled."""
        free = {"out", "epochs", "device", "threads", "max_minutes", "pth"}
        a, b = asdict(self), asdict(other)
        return [k for k in a if k not in free and not _same_value(k, a[k], b[k])]


#: TrainConfig fields holding paths: recorded resolved, compared resolved.
PATH_FIELDS = ("data", "init")


def _same_value(key: str, a: Any, b: Any) -> bool:
    """Whether two values of config field ``key`` are the same (paths by where they point)."""
    if key in PATH_FIELDS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    return a == b


@dataclass
class TrainState:
    """What a resumed run needs besides the weights."""

    epoch: int = -1  # last completed epoch
    best_miou: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    data_hash: str = ""
    init_sha256: str = ""
    """SHA-256 of the ``--init`` checkpoint the run started from ("" without one)."""


# ---------------------------------------------------------------------------------------------
# Model I/O (the segmentation package owns the model and its checkpoint format)
# ---------------------------------------------------------------------------------------------


def build_model(config: TrainConfig, init: str | None,
                resumed: bool = False) -> DamageSegmenter:
    """A fresh 2-class SegFormer of the configured variant, or one loaded from a checkpoint
    (of the configured variant, unless ``resumed``: a run's own last checkpoint is what it
    trained, whatever variant an earlier version recorded)."""
    if init is None:
        return DamageSegmenter.build(config.variant, **config.model_overrides)
    model, _info = load_checkpoint(Path(init))
    if not resumed:
        _check_variant(config, init, model.variant)
    return with_two_classes(model)


def _check_variant(config: TrainConfig, init: str, variant: str | None) -> None:
    """Refuse an init checkpoint of another MiT variant than the run's."""
    if variant in VARIANTS and variant != config.variant:
        raise ValueError(f"{init}: the checkpoint is MiT-{variant}, but variant "
                         f"{config.variant} was asked (--variant {config.variant}); give "
                         f"--variant {variant} or leave --variant out")


def checkpoint_variant(path: str | Path) -> str | None:
    """The MiT variant of a checkpoint (None for non-standard sizes)."""
    model, _info = load_checkpoint(Path(path))
    return model.variant if model.variant in VARIANTS else None


def with_two_classes(model: DamageSegmenter) -> DamageSegmenter:
    """The model with a fresh 2-class classifier if it has another class count.

    The authors initialise from the ADE20k (150-class) checkpoint: its encoder and decoder are
    kept, only the final 1×1 classifier is replaced, as the authors' ``num_labels=2``
    ``ignore_mismatched_sizes`` load does.
    """
    if int(model.config.num_labels) == len(ID2LABEL):
        return model
    head = model.model.decode_head
    head.classifier = torch.nn.Conv2d(head.classifier.in_channels, len(ID2LABEL), kernel_size=1)
    model.model.config.num_labels = len(ID2LABEL)
    model.model.config.id2label = dict(ID2LABEL)
    model.model.config.label2id = {v: k for k, v in ID2LABEL.items()}
    return model


def save_weights(model: DamageSegmenter, path: Path, info: ModelInfo, pth: bool) -> ModelInfo:
    """Weights as safetensors + JSON sidecar (and the authors' 4.x ``.pth`` when asked); the
    info as recorded (with the weights' sha256)."""
    return save_checkpoint(model, path.with_suffix(".safetensors"), info, authors_pth=pth)


def model_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) logits of a batch of (B, 3, H, W) [0, 1] images."""
    out = model(images)
    return out.logits if hasattr(out, "logits") else out


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    if device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states() -> dict[str, Any]:
    """The global RNG states (dropout / drop-path draw from torch's)."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states saved by ``rng_states``."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of an epoch (a function of seed and epoch only)."""
    gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def batches(dataset: Dataset, order: list[int],
            batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Collated (images, targets) batches in ``order``, loaded lazily."""
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def datasets(config: TrainConfig,
             render: TileRenderer | None = None) -> tuple[Dataset, Dataset, str, str]:
    """(train, validation, validation split name, data hash) of a configuration.

    From a folder the validation set is ``val.txt`` when present, else ``test.txt`` (the
    paper has only a train/test split: ``train`` then warns that ``best`` is selected on the
    test set); from ``--demo`` it is a disjoint seed range. Split files that share an image
    (or list one twice) are refused.
    """
    augment = Augmentation() if config.augment else None
    if config.demo:
        train = DemoTileDataset(config.demo_tiles, config.demo_size, config.demo_first_seed,
                                augment, config.seed, render, crop=config.crop)
        val = DemoTileDataset(config.demo_val_tiles, config.demo_size,
                              config.demo_val_first_seed, None, config.seed, render)
        digest = hashlib.sha256(f"{train.fingerprint()}:{val.fingerprint()}".encode())
        return train, val, "demo-val", digest.hexdigest()
    root = Path(str(config.data))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    check_disjoint_splits(root)
    val_split = "val" if (root / "val.txt").exists() else "test"
    train = TileDataset(root, "train", augment, config.seed, crop=config.crop)
    val = TileDataset(root, val_split, None, config.seed)
    digest = hashlib.sha256(f"{train.fingerprint()}:{val.fingerprint()}".encode())
    return train, val, val_split, digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Epochs
# ---------------------------------------------------------------------------------------------


def autocast(device: torch.device) -> torch.autocast:
    """Mixed precision on CUDA (float16), a no-op context on CPU."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def train_epoch(model: torch.nn.Module, dataset: Dataset, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, config: TrainConfig, epoch: int,
                device: torch.device, progress: Progress | None = None) -> float:
    """One pass over the training set; returns the mean loss per sample."""
    model.train()
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    order = epoch_order(len(dataset), config.seed, epoch)
    task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(order),
                             loss="") if progress else None
    total, count = 0.0, 0
    for images, targets in batches(dataset, order, config.batch_size):
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            logits = model_logits(model, images)
        loss = bced_loss(logits.float(), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(images)
        count += len(images)
        if progress is not None and task is not None:
            progress.update(task, advance=len(images), loss=f"loss {total / count:.4f}")
    if progress is not None and task is not None:
        progress.remove_task(task)
    return total / max(count, 1)


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: Dataset, batch_size: int,
             device: torch.device) -> tuple[float, Confusion]:
    """Mean validation loss and the confusion counts pooled over the set."""
    model.eval()
    total, counts = 0.0, Confusion()
    for images, targets in batches(dataset, list(range(len(dataset))), batch_size):
        images, targets = images.to(device), targets.to(device)
        with autocast(device):
            logits = model_logits(model, images)
        logits = logits.float()
        total += float(bced_loss(logits, targets)) * len(images)
        pred = (foreground_logit(logits, tuple(targets.shape[-2:])) > 0).cpu().numpy()
        labels = targets.cpu().numpy()
        counts = counts + confusion(pred, labels > 0.5, labels >= 0)  # nodata: IGNORE_TARGET
    return total / len(dataset), counts


# ---------------------------------------------------------------------------------------------
# Checkpoints and curves
# ---------------------------------------------------------------------------------------------


def checkpoint_info(config: TrainConfig, state: TrainState, epoch: int, name: str,
                    metrics: dict[str, Any], val_split: str) -> ModelInfo:
    """The sidecar record of a checkpoint: training config, epoch, metrics, data hash, and
    the sha256 of the ``--init`` checkpoint (its path alone may not outlive the run)."""
    training = {"trainer": "icedamage train", "epoch": epoch, "epochs": config.epochs,
                "validation_split": val_split, "best_epoch": state.best_epoch,
                "config": asdict(config), "init_sha256": state.init_sha256 or None}
    return ModelInfo(name=name, variant=config.variant, training=training, metrics=metrics,
                     data_sha256=state.data_hash)


def save_state(out: Path, config: TrainConfig, state: TrainState,
               optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler, weights_sha256: str) -> None:
    """Optimizer, scheduler, scaler, RNG states and history for an exact resume, with the
    sha256 of the ``last`` weights they go with (written just before, in a file of its own)."""
    payload = {"config": asdict(config), "state": asdict(state),
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "scaler": scaler.state_dict(), "rng": rng_states(),
               "weights_sha256": weights_sha256}
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(payload, tmp)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss (train, validation) and validation mIoU / F1 per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="BCED loss", title="Loss")
    ax_loss.legend()
    for key in ("miou", "f1", "precision", "recall"):
        values = [h["val"].get(key) for h in history]
        ax_metric.plot(epochs, [math.nan if v is None else v for v in values], label=key)
    ax_metric.set(xlabel="epoch", ylabel="validation", title="Validation metrics", ylim=(0, 1))
    for ax in (ax_loss, ax_metric):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_metric.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _json_metrics(counts: Confusion) -> dict[str, Any]:
    """Counts and metrics with NaN as None."""
    return counts.to_dict() | {k: (None if math.isnan(v) else round(v, 6))
                               for k, v in counts.metrics().items()}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False, render: TileRenderer | None = None,
          console: Console | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainState:
    """Train (or resume) a run into ``config.out``; returns the final state.

    The run folder is created only once the configuration, the data and the model have passed
    their checks, so a refused run leaves nothing behind.
    """
    console = console or Console()
    config = with_resolved_paths(config)
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    seed_everything(config.seed, device)

    saved = None
    if resume:
        saved = load_state(out)
        differs = config.same_run(recorded_config(saved, out))
        if differs:
            raise ValueError(f"{out / STATE_FILE}: cannot resume with different "
                             f"{', '.join(differs)}")
        check_state_weights(out, saved)
    elif (out / STATE_FILE).exists():
        raise FileExistsError(f"{out / STATE_FILE}: a run exists here (use --resume)")

    if saved is None and config.init is not None:  # before the (slow) data: fail fast
        _check_variant(config, config.init, checkpoint_variant(config.init))
    train_set, val_set, val_split, data_hash = datasets(config, render)
    if val_split == "test":
        console.print(f"[yellow]warning:[/yellow] {escape(selection_on_test_warning(config))}",
                      soft_wrap=True)
    model = build_model(config, str(out / LAST_WEIGHTS) if saved else config.init,
                        resumed=saved is not None)
    model.to(device)
    schedule = config.schedule
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.peak_lr,
                                  weight_decay=config.weight_decay)
    scheduler = schedule.scheduler(optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    state = TrainState(data_hash=data_hash, init_sha256=_init_sha256(config.init))
    if saved is not None:
        state = TrainState(**saved["state"])
        state.init_sha256 = state.init_sha256 or _init_sha256(config.init)  # older states
        if state.data_hash != data_hash:
            raise ValueError(f"{out / STATE_FILE}: the training data changed since the run "
                             "started (data hash differs)")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        set_rng_states(saved["rng"])
        if config.pth:  # --pth asked now: the checkpoints saved before it get theirs too
            write_missing_pth(out)

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for epoch in range(state.epoch + 1, config.epochs):
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_epoch(model, train_set, optimizer, scaler, config, epoch,
                                     device, progress)
            scheduler.step()
            val_loss, counts = validate(model, val_set, config.batch_size, device)
            record = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss,
                      "val": _json_metrics(counts),
                      "elapsed_s": round(time.monotonic() - started, 1)}
            state.history.append(record)
            state.epoch = epoch
            miou = counts.metrics()["miou"]
            improved = not math.isnan(miou) and miou > state.best_miou
            metrics = {"train_loss": train_loss, "val_loss": val_loss,
                       **record["val"]}
            if improved:
                state.best_miou, state.best_epoch = miou, epoch
                save_weights(model, out / "best", checkpoint_info(
                    config, state, epoch, "best", metrics, val_split), config.pth)
            last = save_weights(model, out / "last", checkpoint_info(
                config, state, epoch, "last", metrics, val_split), config.pth)
            save_state(out, config, state, optimizer, scheduler, scaler, last.sha256)
            with atomic_path(out / HISTORY_FILE) as tmp:
                tmp.write_text(json.dumps(state.history, indent=1) + "\n")
            plot_curves(state.history, out / CURVES_FILE)
            console.print(_epoch_line(record, config.epochs, improved))
            if on_epoch is not None:
                on_epoch(record)
            if config.max_minutes and (time.monotonic() - started) / 60 > config.max_minutes:
                console.print(f"[yellow]stopping after epoch {epoch + 1}: time budget of "
                              f"{config.max_minutes} min reached (resume with --resume)")
                break
    return state


def selection_on_test_warning(config: TrainConfig) -> str:
    """Why a run on data without val.txt flatters its ``best`` checkpoint on the test set."""
    return (f"{config.data} has no val.txt, so the best checkpoint is selected on test.txt: "
            "metrics of `best` on the test split are biased upward. Write a validation split "
            "(`icedamage split-data DATA --val-fraction 0.1 --force`) or evaluate `last` on "
            "test.")


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    """One line of per-epoch progress."""
    v = record["val"]

    def fmt(x: float | None) -> str:
        return "  n/a" if x is None else f"{x:.3f}"

    return (f"epoch {record['epoch'] + 1}/{epochs} lr {record['lr']:.1e} "
            f"loss {record['train_loss']:.4f}/{record['val_loss']:.4f} "
            f"mIoU {fmt(v['miou'])} OA {fmt(v['oa'])} P {fmt(v['precision'])} "
            f"R {fmt(v['recall'])} F1 {fmt(v['f1'])}" + (" [green]best" if improved else ""))


def load_state(out: Path) -> dict[str, Any]:
    """The saved training state of the run in ``out``; a clear error when there is none (a
    run killed while writing its first state leaves only a temporary file)."""
    path = Path(out) / STATE_FILE
    if not path.exists():
        partial = sorted(Path(out).glob(f".{STATE_FILE}.*.tmp"))
        hint = (f" ({partial[0].name} is a state interrupted while being written; start the "
                "run again)" if partial else "")
        raise FileNotFoundError(f"{path}: no saved training state, nothing to resume{hint}")
    return torch.load(path, weights_only=False)


def check_state_weights(out: Path, saved: dict[str, Any]) -> None:
    """Refuse to resume from ``last`` weights other than those the saved state was written with.

    Each epoch writes ``last.safetensors`` and then ``last_state.pt``; a run killed between the
    two leaves the weights of one epoch with the optimizer, scheduler and RNG states of the one
    before, which would train on without a word but no longer as the uninterrupted run. States
    from before the weights' digest was recorded are not checked.
    """
    weights, recorded = Path(out) / LAST_WEIGHTS, saved.get("weights_sha256")
    if recorded is None or not weights.is_file() or weights_sha256(weights) == recorded:
        return
    raise ValueError(
        f"{weights} (epoch {_recorded_epoch(weights)}) is not the weights {Path(out) / STATE_FILE} "
        f"(epoch {int(saved['state']['epoch']) + 1}) was saved with: the run was stopped between "
        "writing the two, so it cannot resume exactly. Start it again in a new folder, or start "
        f"a new run from these weights with --init {weights}")


def _recorded_epoch(weights: Path) -> str:
    """The epoch (1-based) a checkpoint's sidecar records, or "unknown"."""
    try:
        epoch = json.loads(sidecar_path(weights).read_text())["training"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return str(int(epoch) + 1)


def write_missing_pth(out: Path) -> list[Path]:
    """Write the authors' ``.pth`` of the ``best`` and ``last`` checkpoints in ``out`` that
    have none (a run resumed with ``--pth``); returns the files written."""
    from safetensors.torch import load_file

    from producer.segmentation.checkpoints import to_old_layout

    written = []
    for name in ("best", "last"):
        weights, pth = Path(out) / f"{name}.safetensors", Path(out) / f"{name}.pth"
        if weights.exists() and not pth.exists():
            with atomic_path(pth) as tmp:
                torch.save(to_old_layout(load_file(weights)), tmp)
            written.append(pth)
    return written


def resume_config(out: Path, **changes: Any) -> TrainConfig:
    """The configuration stored in ``out``'s state, with resumable fields changed; the run
    folder is ``out`` itself, wherever (and however relative) the run was started."""
    saved = load_state(out)
    return replace(recorded_config(saved, out), **{**changes, "out": str(out)})


def with_resolved_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its data and init paths absolute (recorded so, a resume does not
    depend on the folder it is started from)."""
    return replace(config, **{key: str(Path(value).resolve()) for key in PATH_FIELDS
                              if (value := getattr(config, key)) is not None})


def recorded_config(saved: dict[str, Any], out: Path) -> TrainConfig:
    """The configuration a saved state records, its paths absolute.

    Earlier versions recorded data and init as typed, relative to the folder the run was
    started from. That folder is found, where possible, from the recorded ``out`` (as typed)
    and where the run folder really is; a path existing there is taken, else the one relative
    to the current folder (best effort: the data hash still guards the data).
    """
    config = dict(saved["config"])
    started_in = _started_in(config.get("out"), out)
    for key in PATH_FIELDS:
        value = config.get(key)
        if value is not None and not Path(value).is_absolute():
            config[key] = str(_locate(Path(value), started_in))
    return TrainConfig(**config)


def _started_in(typed_out: str | None, out: Path) -> Path | None:
    """The folder a run was started from: the run folder ``out`` less its recorded relative
    spelling ``typed_out`` (None when that cannot be told)."""
    typed = Path(typed_out or "")
    depth = len(typed.parts)
    here = Path(out).resolve()
    if depth == 0 or typed.is_absolute() or ".." in typed.parts or len(here.parts) <= depth:
        return None
    return here.parents[depth - 1] if here.parts[-depth:] == typed.parts else None


def _locate(path: Path, started_in: Path | None) -> Path:
    """A relative recorded path made absolute: against the folder the run was started from
    when it exists there, else against the current folder."""
    candidates = ([started_in / path] if started_in is not None else []) + [Path.cwd() / path]
    found = next((c for c in candidates if c.exists()), candidates[0])
    return found.resolve()


def _init_sha256(init: str | None) -> str:
    """SHA-256 of the init checkpoint ("" without one, or when it is gone)."""
    return weights_sha256(Path(init)) if init is not None and Path(init).is_file() else ""
