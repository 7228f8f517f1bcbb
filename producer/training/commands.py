"""``icedamage`` commands of the training package: split-data, export-demo-tiles, train,
evaluate and uncertainty."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from catalog.uncertainty import (
    PAPER_EVALUATIONS,
    PAPER_FACTORS,
    PAPER_RESTORATION,
    Evaluation,
    derive_factors,
)
from producer.evaluation import (
    METRICS,
    SetEvaluation,
    confusion,
    difference_map,
    read_precision_recall,
)
from producer.restoration.commands import (
    check_device,
    check_output,
    non_negative,
    positive,
)
from producer.writer import atomic_path

console = Console()
#: Smallest demo tile size (``DemoTileDataset`` refuses smaller ones).
MIN_DEMO_SIZE = 32


def _fail(message: str) -> NoReturn:
    """Print an error on one unwrapped line and exit 1; the message is escaped, so paths with
    ``[...]`` print as given rather than as rich markup."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def split_data(
    root: Annotated[Path, typer.Argument(help="Folder in the authors' layout (images/, labels/)")],
    seed: Annotated[int, typer.Option(help="Seed of the shuffle")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Share of images in test.txt")] = 0.2,
    val_fraction: Annotated[float, typer.Option(
        help="Share in val.txt, the split `train` selects its best checkpoint on (0: none; "
             "then it selects on test.txt)")] = 0.0,
    group_by: Annotated[str, typer.Option(
        help="Regular expression whose first group names an image's region: each region is "
             "split in the same proportions (paper 2.3.3). 'auto': the authors' tile names "
             "(<SENSOR>_<Shelf>_composite_…) when every image follows them; 'none': one shuffle "
             "of all images")] = "auto",
    force: Annotated[bool, typer.Option(help="Rewrite existing split files")] = False,
) -> None:
    """Write a reproducible seeded train/test(/val) split (the paper: 80/20, per region)."""
    from producer.training.data import split_groups, write_split

    _require_folder(root)
    grouping = None if group_by.lower() == "none" else group_by
    try:
        split = write_split(root, seed, test_fraction, val_fraction, force, group_by=grouping)
        regions = split_groups([n for part in split.values() for n in part], grouping)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    stratified = f" (stratified by {len(regions)} regions)" if len(regions) > 1 else ""
    console.print(", ".join(f"{k}: {len(v)}" for k, v in split.items() if v) + stratified)


def _require_folder(path: Path) -> None:
    """Fail with one line when the data folder ``path`` does not exist (or is a file)."""
    if not path.is_dir():
        _fail(f"{path}: data folder not found" if not path.exists()
              else f"{path}: not a folder (give the data folder in the authors' layout)")


def export_demo_tiles(
    out: Annotated[Path, typer.Argument(help="Folder to write images/, labels/ and splits")],
    count: Annotated[int, typer.Option(min=1, help="Number of tiles")] = 64,
    size: Annotated[int, typer.Option(
        min=MIN_DEMO_SIZE, help="Tile size in pixels")] = 512,
    first_seed: Annotated[int, typer.Option(help="Render seed of the first tile")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the 80/20 split")] = 0,
    force: Annotated[bool, typer.Option(help="Re-render existing tiles")] = False,
) -> None:
    """Render demo tiles into the authors' training layout with an 80/20 split."""
    from producer.training.data import SPLITS
    from producer.training.data import export_demo_tiles as export

    check_output(out, "OUT", folder=True)
    kept = [f"{s}.txt" for s in SPLITS if (out / f"{s}.txt").exists()] if not force else []
    try:
        split = export(out, count, size, first_seed, seed, force=force)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    console.print(f"{escape(str(out))}: {count} tiles of {size}² (train {len(split['train'])}, "
                  f"test {len(split['test'])}" + (f", val {len(split['val'])}" if split['val']
                                                  else "") + ")")
    if kept:
        console.print(f"kept the existing split ({', '.join(kept)}); use --force to re-render "
                      "the tiles and rewrite it, or `icedamage split-data --force`")


def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Argument(help="Folder in the authors' layout")] = None,
    demo: Annotated[bool, typer.Option(help="Train on demo tiles rendered on the fly")] = False,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, curves)")] = Path("runs/seg"),
    variant: Annotated[str, typer.Option(
        help="SegFormer MiT variant b0…b5 (default: --init's variant, else b2)",
        show_default=False)] = "b2",
    init: Annotated[Path | None, typer.Option(
        help="Initialise from a local checkpoint (its variant must match --variant)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    start_lr: Annotated[float, typer.Option(callback=positive, help="Warm-up start")] = 1e-5,
    peak_lr: Annotated[float, typer.Option(
        callback=positive, help="Warm-up end / cosine start")] = 1e-4,
    final_lr: Annotated[float, typer.Option(
        callback=positive, help="Cosine end, then constant")] = 5e-5,
    warmup_epochs: Annotated[int, typer.Option(min=0)] = 20,
    cosine_epochs: Annotated[int, typer.Option(min=0)] = 80,
    weight_decay: Annotated[float, typer.Option(callback=non_negative)] = 0.01,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 …")] = "cpu",
    augment: Annotated[bool, typer.Option(help="Random rotation and brightness")] = True,
    crop: Annotated[int | None, typer.Option(help="Train on random crops of this size")] = None,
    demo_tiles: Annotated[int, typer.Option(min=1, help="Demo training tiles")] = 256,
    demo_val_tiles: Annotated[int, typer.Option(min=1, help="Demo validation tiles")] = 32,
    demo_size: Annotated[int, typer.Option(min=MIN_DEMO_SIZE, help="Demo tile size")] = 256,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        callback=positive, help="Stop after this wall time")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --out exactly: its own settings, changed only by the options "
             "given now (epochs, device, threads, max-minutes, pth; others must match)")] = False,
    pth: Annotated[bool, typer.Option(help="Also write the authors' .pth layout")] = False,
) -> None:
    """Train the SegFormer damage segmenter (BCED, AdamW, the paper's schedule)."""
    from producer.training.train import TrainConfig, checkpoint_variant, resume_config
    from producer.training.train import train as run

    check_output(out, "--out", folder=True)
    try:
        if init is not None and not resume and not _typed(ctx, "variant"):
            variant = checkpoint_variant(init) or variant  # the checkpoint's own variant
        if resume:
            config = resume_config(out, **_given_settings(ctx))
        else:
            config = TrainConfig(
                out=str(out), data=None if data is None else str(data.resolve()), demo=demo,
                variant=variant, init=None if init is None else str(init.resolve()),
                epochs=epochs,
                batch_size=batch_size, start_lr=start_lr, peak_lr=peak_lr, final_lr=final_lr,
                warmup_epochs=warmup_epochs, cosine_epochs=cosine_epochs,
                weight_decay=weight_decay, seed=seed, device=device, augment=augment,
                crop=crop, demo_tiles=demo_tiles, demo_val_tiles=demo_val_tiles,
                demo_size=demo_size,
                threads=threads, pth=pth, max_minutes=max_minutes)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    check_device(config.device)  # as typed, or the resumed run's own
    try:
        state = run(config, resume=resume, console=console)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    console.print(f"best validation mIoU {state.best_miou:.4f} at epoch {state.best_epoch + 1}; "
                  f"checkpoints in {escape(str(out))}")


def _given_settings(ctx: typer.Context) -> dict[str, object]:
    """The run settings typed on this command line (defaults left out), as TrainConfig fields.

    A resumed run keeps its own settings; these change it where a resume may (epochs, device
    …), and any other one that differs from the run's is refused by ``train``.
    """
    from producer.training.train import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__) - {"out"}
    return {name: str(value.resolve()) if isinstance(value, Path) else value
            for name, value in ctx.params.items() if name in fields and _typed(ctx, name)}


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (or its environment variable)."""
    typed = {"COMMANDLINE", "ENVIRONMENT"}  # by name: typer may bring its own click's enum
    return getattr(ctx.get_parameter_source(name), "name", "") in typed


def _prediction_path(folder: Path, name: str) -> Path:
    """The prediction map of ``name`` in ``folder``.

    NAME.tif, NAME_pred.tif, NAME_mask.tif, or labels/NAME_mask.tif (the authors' layout, as
    written by ``evaluate --save-predictions``).
    """
    for candidate in (f"{name}.tif", f"{name}_pred.tif", f"{name}_mask.tif",
                      f"labels/{name}_mask.tif"):
        if (folder / candidate).exists():
            return folder / candidate
    raise FileNotFoundError(f"{folder}/{name}.tif: no prediction for image {name!r}")


def _read_prediction(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A prediction map as (damage mask, valid mask or None); nodata pixels are not counted."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain tiles are fine
        src = rasterio.open(path)
    with src:
        pixels = src.read(1)
        valid = None if src.nodata is None else pixels != src.nodata
    damage = pixels > 0 if valid is None else (pixels > 0) & valid
    return damage, valid


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically."""
    import matplotlib.image

    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, rgb, format="png")


#: The values ``evaluate --split`` accepts ("all": every image with a label).
EVALUATION_SPLITS = ("train", "val", "test", "all")


def _model_predictor(checkpoint: Path, device: str, tta: bool, batch_size: int
                     ) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(rgb uint8 (H, W, 3) -> boolean damage mask, sha256 of the weights), with the
    segmentation package's inference (the authors' sliding windows and Gaussian weighting,
    4-view TTA unless ``tta`` is off)."""
    from producer.segmentation.checkpoints import load_checkpoint
    from producer.segmentation.inference import predict_array

    model, info = load_checkpoint(checkpoint)
    model.eval()
    return (lambda rgb: predict_array(model, rgb, tta=tta, batch_size=batch_size,
                                      device=device).labels > 0), info.sha256


def _batch_size(batch_size: int | None, device: str) -> int:
    """The batch size asked for, else 8 images per call on the CPU and 32 on CUDA (as
    ``produce``)."""
    if batch_size is not None:
        return batch_size
    from producer.segmentation.inference import resolve_device

    return 32 if resolve_device(device).type == "cuda" else 8


def _selection_warning(checkpoint: Path, data: Path, split: str) -> str | None:
    """Why evaluating ``checkpoint`` on ``split`` of ``data`` flatters it, or None.

    ``train`` keeps as ``best`` the epoch that scored highest on its validation split (the
    sidecar's ``training.validation_split``, test.txt when the data had no val.txt), so
    metrics on that split (or on ``all`` of the same folder) are biased upward. A ``last``
    checkpoint was not selected.
    """
    from producer.segmentation.checkpoints import sidecar_path

    side = sidecar_path(checkpoint)
    try:
        doc = json.loads(side.read_text())
        training = doc["training"]
        selected, recorded = training["validation_split"], training["config"].get("data")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    # another data folder's split of the same name is other images (unknown folder: warn)
    same_folder = recorded is None or Path(recorded).resolve() == data.resolve()
    if doc.get("name") == "last" or not same_folder or split not in (selected, "all"):
        return None
    return (f"{checkpoint} was selected as the best epoch of its run on the {selected!r} split "
            f"(training.validation_split in {side.name}), and --split {split} "
            f"{'is that split' if split == selected else 'includes it'}: metrics biased "
            "upward; evaluate `last` or a held-out split")


def _evaluation_names(data: Path, split: str) -> list[str]:
    """The images ``evaluate`` scores, checked before any inference: the split exists, lists
    each image once, shares none with the other splits, and the labels are readable."""
    from producer.training.data import (
        check_disjoint_splits,
        check_label_encoding,
        label_path,
        list_names,
        read_split,
    )

    names = list_names(data) if split == "all" else read_split(data, split)
    if not names:
        raise ValueError(f"{data / f'{split}.txt'} lists no images: nothing to evaluate")
    check_disjoint_splits(data)
    check_label_encoding([p for p in (label_path(data, n) for n in names) if p.exists()])
    return names


def evaluate(
    data: Annotated[Path, typer.Argument(help="Folder in the authors' layout with labels")],
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json and difference maps")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint to predict with")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Folder of existing maps")] = None,
    split: Annotated[str, typer.Option(help="train, val, test or all")] = "test",
    name: Annotated[str | None, typer.Option(help="Name of this evaluation")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda …")] = "auto",
    tta: Annotated[bool, typer.Option(
        help="Mirror test-time augmentation (4 views, the authors' inference); --no-tta: one "
             "forward per window")] = True,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Images (windows × TTA views) per forward pass (default 8 on the CPU, 32 on "
                    "CUDA)")] = None,
    save_predictions: Annotated[bool, typer.Option(help="Write model maps (0/255)")] = False,
) -> None:
    """Evaluate damage maps against labels: mIoU, OA, precision, recall, F1 (Eq. 4-9)."""
    if (model is None) == (predictions is None):
        _fail("give exactly one of --model or --predictions")
    if split not in EVALUATION_SPLITS:
        _fail(f"--split {split!r}: expected one of {', '.join(EVALUATION_SPLITS)}")
    _require_folder(data)
    check_output(out, "--out", folder=True)
    if model is not None:  # maps given by --predictions need no device
        check_device(device)
    try:
        names = _evaluation_names(data, split)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    if threads:
        import torch

        torch.set_num_threads(threads)
    predict, protocol = None, {"split": split}
    if model is not None:
        warning = _selection_warning(model, data, split)
        if warning:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
        size = _batch_size(batch_size, device)
        try:
            predict, sha = _model_predictor(model, device, tta, size)
        except (OSError, ValueError, ImportError) as exc:
            _fail(str(exc) if model.name in str(exc) else f"{model}: {exc}")  # named once
        protocol |= {"model": str(model), "weights_sha256": sha, "tta": tta, "batch_size": size}
        if warning:
            protocol["warning"] = warning
    else:
        protocol |= {"predictions": str(predictions), "tta": None}
    result = SetEvaluation(name or f"{Path(data).name}:{split}", protocol=protocol)
    with _removed_on_failure(out):
        _evaluate_images(result, names, data, out, predict, predictions, save_predictions)
    console.print(_table(result))
    console.print(f"wrote {escape(str(out / 'evaluation.json'))} and {len(names)} difference "
                  "maps")


def _evaluate_images(result: SetEvaluation, names: list[str], data: Path, out: Path,
                     predict: Callable[[np.ndarray], np.ndarray] | None,
                     predictions: Path | None, save_predictions: bool) -> None:
    """Score each image into ``result``, write its difference map, then evaluation.json; an
    image that cannot be scored ends the command in one line naming it."""
    for image in track(names, description="evaluating", console=console, transient=True):
        try:
            pred, label, valid = _evaluation_pair(data, image, predict, predictions,
                                                  out if save_predictions else None)
            result.add(image, confusion(pred, label, valid))
        except (OSError, ValueError) as exc:  # rasterio's errors are OSError / ValueError
            _fail(f"{image}: {exc}")
        diff = difference_map(pred, label)
        if valid is not None:
            diff[~valid] = NODATA_COLOUR
        _write_png(out / "difference" / f"{image}_difference.png", diff)
    with atomic_path(out / "evaluation.json") as tmp:
        tmp.write_text(result.to_json())


@contextmanager
def _removed_on_failure(folder: Path) -> Iterator[None]:
    """Remove ``folder`` when the block fails and the folder did not exist before it (so all
    in it, difference maps of the images done so far, is this failed run's): a failed
    evaluation leaves no half-written output. A folder that existed is left as it is."""
    new = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]
    try:
        yield
    except BaseException:
        if new:
            shutil.rmtree(new[-1], ignore_errors=True)  # the topmost folder this run made
        raise


#: Colour of label or prediction nodata in the difference maps (not a Fig. 7 class colour).
NODATA_COLOUR = (128, 128, 128)


def _evaluation_pair(data: Path, image: str, predict: Callable[[np.ndarray], np.ndarray] | None,
                     predictions: Path | None, save: Path | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(prediction, label, valid mask or None) of one image; label nodata and prediction
    nodata are not valid. Errors name the file."""
    from producer.training.data import (
        check_same_shape,
        image_path,
        label_path,
        raster_shape,
        read_image,
        read_label,
        write_tile,
    )

    lpath = label_path(data, image)
    if not lpath.exists():
        raise FileNotFoundError(f"{lpath}: label missing")
    label, valid = read_label(lpath)
    if predict is not None:
        ipath = image_path(data, image)
        check_same_shape(ipath, raster_shape(ipath), lpath, label.shape)
        rgb = read_image(ipath)
        pred = predict(rgb)
        if save is not None:
            write_tile(save / "predictions", image, rgb, pred)
        return pred, label, valid
    assert predictions is not None
    ppath = _prediction_path(predictions, image)
    if ppath.samefile(lpath):
        raise ValueError(f"{ppath}: the prediction is the label file itself (point "
                         "--predictions at a folder of maps, not at the data folder)")
    pred, pred_valid = _read_prediction(ppath)
    check_same_shape(ppath, pred.shape, lpath, label.shape)
    if pred_valid is not None:
        valid = pred_valid if valid is None else valid & pred_valid
    return pred, label, valid


def _table(result: SetEvaluation) -> Table:
    """Per-image and pooled metrics as a rich table."""
    table = Table(title=f"Segmentation evaluation: {escape(result.name)}")
    table.add_column("image")
    for key in METRICS:
        table.add_column({"miou": "mIoU", "oa": "OA"}.get(key, key.capitalize()), justify="right")
    rows = [*sorted(result.images.items()), ("pooled", result.pooled)]
    for image, counts in rows:
        m = counts.metrics()
        cells = ("n/a" if math.isnan(m[k]) else f"{m[k]:.3f}" for k in METRICS)
        table.add_row(escape(image), *cells, style="bold" if image == "pooled" else None)
    return table


def uncertainty(
    evaluations: Annotated[list[Path] | None, typer.Argument(
        help="Segmentation evaluation JSON files (none: the paper's)")] = None,
    out: Annotated[Path, typer.Option(help="Factors file to write")] = Path("factors.json"),
    restoration: Annotated[Path | None, typer.Option(
        help="Evaluation of segmentation on restored vs original imagery")] = None,
    restoration_method: Annotated[str | None, typer.Option(
        help="Restoration method the --restoration evaluation is for: DiffGF or FillNodata "
             "(default: the one its report names, else DiffGF). Another method than DiffGF "
             "keeps the paper's λ_DiffGF.")] = None,
) -> None:
    """λ = precision/recall per evaluation; λ_min, λ_max, λ_restoration (paper section 3.2.4).

    The bounds are a range for the true damage, not an error bar around the mapped value:
    warns when that range misses the mapped value (λ_min > 1 or λ_max < 1) or has zero width
    (a single evaluation). A restoration factor only widens the range (≥ 1: the upper bound,
    < 1: the lower one).
    """
    from catalog.uncertainty import (
        factor_warnings,
        read_restoration_evaluation,
        restoration_rule,
    )

    check_output(out, "--out", folder=False)
    warn = Console(stderr=True)
    try:
        for path in [*(evaluations or []), *([restoration] if restoration else [])]:
            _check_json_object(path)
        segs = ([Evaluation(*read_precision_recall(p)) for p in evaluations] if evaluations
                else list(PAPER_EVALUATIONS))
        if restoration is not None:
            restored, method = read_restoration_evaluation(restoration, restoration_method)
        elif restoration_method is not None:
            raise ValueError("--restoration-method names the method of a --restoration "
                             "evaluation; give the evaluation too")
        else:
            restored, method = PAPER_RESTORATION, "DiffGF"
        factors = PAPER_FACTORS if not evaluations and not restoration else derive_factors(
            segs, restored, method)
    except ValueError as exc:
        _fail(str(exc))
    with atomic_path(out) as tmp:
        tmp.write_text(factors.to_json())
    console.print(f"λ_min {factors.lambda_min:.3f}  λ_max {factors.lambda_max:.3f}  "
                  f"λ_restoration {factors.lambda_restoration:.3f} → {escape(str(out))}",
                  soft_wrap=True)
    for name, factor in sorted(factors.known_restorations().items()):
        low, high = factors.factors_for(name)
        console.print(f"  {escape(restoration_rule(name, factor))}: bounds {low:.3f}-{high:.3f} "
                      "× the mapped value", soft_wrap=True)
    console.print(escape(json.dumps({"sources": list(factors.sources)})), soft_wrap=True)
    for note in factor_warnings(factors, len(segs)):
        warn.print(f"[yellow]warning:[/yellow] {escape(note)}", soft_wrap=True)


def _check_json_object(path: Path) -> None:
    """Refuse an evaluation file that is not UTF-8 JSON holding an object, with a ValueError
    naming the file (the readers would fail on it without naming it, or with a traceback)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text at byte {exc.start} (rule: an evaluation "
                         "is a JSON file)") from exc
    except OSError as exc:
        raise ValueError(f"{path}: not readable ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column "
                         f"{exc.colno})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: holds a JSON {type(doc).__name__}, not an object (rule: an "
                         "evaluation is an object with precision and recall)")


def register(app: typer.Typer) -> None:
    """Add the training package's commands to ``icedamage``."""
    app.command("split-data")(split_data)
    app.command("export-demo-tiles")(export_demo_tiles)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("uncertainty")(uncertainty)
