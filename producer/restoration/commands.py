"""``icedamage train-diffgf`` and ``icedamage evaluate-restoration``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.devices import device_problem
from producer.spec import RESTORATION_METHODS
from producer.writer import atomic_path, unwritable

if TYPE_CHECKING:
    import torch

    from producer.restoration.diffgf import DiffGF
    from producer.restoration.evaluate import EvalImage
    from producer.restoration.train import TrainConfig, TrainState

console = Console(stderr=True)

#: ``--device`` values: auto (CUDA when present), the CPU, the default or a numbered CUDA device.
#: Most DDIM steps: DiffGF's scheduler has 1000 training timesteps to pick them from.
MAX_DDIM_STEPS = 1000
#: Smallest ``--crop`` / ``--size``: DiffGF works on 16-px cells (autoencoder ×4, UNet ×4),
#: and SSIM needs a 7-px window.
MIN_TILE = 16


# ---------------------------------------------------------------- checks shared by the commands
# (also used by producer.training.commands: they belong in a CLI-wide module once there is one)


def error(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on one unwrapped line and exit with ``code``.

    The message is escaped, so paths and values with ``[...]`` print as given instead of being
    read as rich markup (or failing as broken markup).
    """
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    """Refuse a bad option value: one line, exit 2 (bad usage, as ``produce``)."""
    error(message, 2)


def positive(value: float | None) -> float | None:
    """typer callback: a finite number > 0 (or the option left out), so a rate or a time budget
    of 0, below 0, nan or inf is refused before any work (typer's ``min`` lets nan through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


def non_negative(value: float | None) -> float | None:
    """typer callback: a finite number >= 0 (or the option left out)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value} is not a finite number >= 0")
    return value


def check_device(device: str, option: str = "--device") -> None:
    """Refuse, with exit 2, a device torch cannot use here (``producer.devices``)."""
    reason = device_problem(device)
    if reason is not None:
        shown = repr(device) if reason.startswith("not a device") else device
        usage_error(f"{option} {shown}: {reason}")


def check_output(path: Path, option: str, *, folder: bool) -> None:
    """Refuse, with exit 2 and before any work, an output the command could only fail to write
    at its end (``producer.writer.unwritable``)."""
    reason = unwritable(path, folder=folder)
    if reason is not None:
        usage_error(f"{option} {path}: {reason}")


@contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (and the empty folders above it this block created) when the block
    fails and leaves it empty, so a refused run leaves no empty output folder behind; a folder
    with files in it (a checkpoint to resume from) is kept."""
    new = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in new:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty, or already gone
                break
        raise


def _named(option: str, path: Path, exc: Exception) -> str:
    """``exc`` as one message naming ``option`` and the file once."""
    text = str(exc) or type(exc).__name__
    return f"{option}: {text}" if path.name in text else f"{option} {path}: {text}"


def _progress() -> Progress:
    """The progress bar of the restoration commands (on stderr)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def train_diffgf(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for checkpoints, final weights, loss curve.")],
    data: Annotated[Path | None, typer.Option(
        help="Folder of complete 3-band UInt8 GeoTIFF/PNG tiles; default: synthetic ice tiles.",
        exists=True, file_okay=False)] = None,
    vae_steps: Annotated[int, typer.Option(min=0, help="Autoencoder steps (phase 1).")] = 300,
    unet_steps: Annotated[int, typer.Option(min=0, help="Diffusion UNet steps (phase 2).")] = 900,
    batch: Annotated[int, typer.Option(min=1, help="Tiles per step.")] = 4,
    crop: Annotated[int, typer.Option(
        min=MIN_TILE, help="Training tile size (multiple of 16).")] = 128,
    lr_vae: Annotated[float, typer.Option(
        callback=positive, help="AdamW learning rate, autoencoder.")] = 2e-4,
    lr_unet: Annotated[float, typer.Option(
        callback=positive, help="AdamW learning rate, UNet.")] = 2e-4,
    seed: Annotated[int, typer.Option(
        min=0, help="Seed of data, masks, noise and init.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(
        min=1, help="Steps between checkpoints.")] = 100,
    resume: Annotated[bool, typer.Option(
        help="Continue from OUT/checkpoint.safetensors with the run's own settings, changed "
             "only by the options given now (unet-steps, checkpoint-every; others must "
             "match).")] = False,
    threads: Annotated[int, typer.Option(
        min=0, help="CPU threads for torch (0: torch default).")] = 0,
    max_minutes: Annotated[float | None, typer.Option(
        callback=positive,
        help="Wall-clock budget; the run ends early (weights written) when it is spent.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(
        min=0, help="Processes drawing training tiles ahead (0: none; a GPU needs several).")] = 0,
) -> None:
    """Train DiffGF on complete images with simulated SLC-off gaps (SLCANT construction)."""
    if crop % 16:
        raise typer.BadParameter(f"--crop {crop} must be a multiple of 16")
    check_output(out, "--out", folder=True)
    check_device(device)
    import torch

    from producer.restoration.train import CURVE, FINAL, TrainConfig
    from producer.segmentation.inference import resolve_device

    asked = TrainConfig(vae_steps=vae_steps, unet_steps=unet_steps, batch=batch, crop=crop,
                        lr_vae=lr_vae, lr_unet=lr_unet, seed=seed,
                        checkpoint_every=checkpoint_every,
                        data=str(data.resolve()) if data else None)
    config = _diffgf_config(ctx, out, resume, asked)

    if threads:
        torch.set_num_threads(threads)
    with removed_if_left_empty(out):
        state = _run_diffgf(config, out, resume, max_minutes, resolve_device(device), workers)
    console.print(f"weights: {escape(str(out / FINAL))} ({state.step} steps, "
                  f"{state.seconds:.0f} s); loss curve: {escape(str(out / CURVE))}")


def _diffgf_config(ctx: typer.Context, out: Path, resume: bool, asked: TrainConfig
                   ) -> TrainConfig:
    """The run's configuration (``asked``, or on a resume the run's own changed by the options
    typed), refused in one line before any work when ``out`` holds a finished run that is not
    resumed, when a resume's settings cannot be read, or when both phases have no steps (a run
    that would write untrained weights)."""
    from producer.restoration.train import CHECKPOINT, FINAL

    if (out / FINAL).exists() and not resume:
        error(f"{out / FINAL} exists; pass --resume to continue that run or choose another "
              "--out")
    config = asked
    if resume:
        try:
            config = _resumed_config(ctx, out, asked)
        except ValueError as exc:
            error(str(exc))
        if not (out / CHECKPOINT).exists():
            console.print(f"no checkpoint in {escape(str(out))}; starting a new run")
    if config.total_steps < 1:
        usage_error("--vae-steps and --unet-steps are both 0 (rule: a run trains at least "
                    "one step)")
    return config


def _run_diffgf(config: TrainConfig, out: Path, resume: bool, max_minutes: float | None,
                device: torch.device, workers: int) -> TrainState:
    """Train with a progress bar; the run's own refusals (data, resume) end in one line."""
    from producer.restoration.train import train

    with _progress() as bar:
        task = bar.add_task("train-diffgf", total=config.total_steps, info="")

        def report(step: int, total: int, loss: float) -> None:
            phase = "vae" if step <= config.vae_steps else "unet"
            bar.update(task, completed=step, info=f"{phase} loss {loss:.4f}")

        try:
            _, state = train(config, out, resume=resume, progress=report,
                             max_seconds=None if max_minutes is None else 60 * max_minutes,
                             device=device, workers=workers)
        except (ValueError, FileNotFoundError) as exc:
            bar.stop()
            error(str(exc))
    return state


def _resumed_config(ctx: typer.Context, out: Path, asked: TrainConfig) -> TrainConfig:
    """The configuration a resume continues with: the checkpoint's own, changed only by the
    options typed now (``asked`` holds them; a change the run cannot take is refused by
    ``train``); ``asked`` itself when there is no checkpoint yet."""
    from dataclasses import fields, replace

    from producer.restoration.train import saved_config

    saved = saved_config(out)
    if saved is None:
        return asked
    typed = {"COMMANDLINE", "ENVIRONMENT"}  # by name: typer may bring its own click's enum
    given = {f.name: getattr(asked, f.name) for f in fields(asked)
             if f.name in ctx.params
             and getattr(ctx.get_parameter_source(f.name), "name", "") in typed}
    return replace(saved, **given)


def evaluate_restoration(
    out: Annotated[Path, typer.Option(help="JSON report to write.")],
    diffgf: Annotated[Path | None, typer.Option(
        help="DiffGF weights (.safetensors with .json beside it, or a save_pretrained folder).")
    ] = None,
    methods: Annotated[str, typer.Option(
        help=f"Comma-separated methods among {sorted(RESTORATION_METHODS)}.")]
    = "DiffGF,FillNodata",
    data: Annotated[Path | None, typer.Option(
        help="Folder of complete tiles; default: held-out synthetic tiles.", exists=True,
        file_okay=False)] = None,
    synthetic: Annotated[int, typer.Option(
        min=1, help="Held-out synthetic tiles when no --data.")] = 16,
    demo: Annotated[int, typer.Option(
        min=0, help="Evaluate on this many demo Landsat 7 SLC-off scenes instead (their own "
                    "gaps; reference: the same date rendered without gaps), --size px a side."
    )] = 0,
    size: Annotated[int, typer.Option(
        min=MIN_TILE, help="Synthetic tile or demo window size.")] = 256,
    seed: Annotated[int, typer.Option(min=0, help="Seed of masks and sampling.")] = 0,
    steps: Annotated[int, typer.Option(min=1, max=MAX_DDIM_STEPS, help="DDIM steps.")] = 20,
    segmentation: Annotated[Path | None, typer.Option(
        help="SegFormer weights: also report the damage-map agreement of restored vs original "
             "(Table 5 style; its precision/recall give λ_restoration).", exists=True,
        dir_okay=False)] = None,
) -> None:
    """Simulate SLC-off on complete images, restore, report PSNR/SSIM/UIQI/CC/RMSE."""
    from producer.restoration.evaluate import evaluate

    chosen = _chosen_methods(methods)
    if demo and data:
        raise typer.BadParameter("--demo and --data exclude each other: choose one set of images")
    check_output(out, "--out", folder=False)
    model = _diffgf_model(diffgf) if "DiffGF" in chosen else None
    segment = _segmenter(segmentation) if segmentation else None
    images = _evaluation_images(data, demo, synthetic, size)
    with _progress() as bar:
        task = bar.add_task("evaluate", total=len(images) * len(chosen), info="")
        report = evaluate(images, chosen, model, seed=seed, steps=steps,
                          progress=lambda d, t: bar.update(task, completed=d), segment=segment)
    report["segmentation_weights"] = str(segmentation) if segmentation else None
    report["data"] = (str(data) if data else f"demo SLC-off scenes ({size} px)" if demo
                      else f"synthetic held-out tiles ({size} px)")
    report["diffgf_weights"] = str(diffgf) if diffgf else None
    report["ddim_steps"] = steps
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(_json_safe(report), indent=2))
    Console().print(summary_table(report))
    if "segmentation_agreement" in report:
        seg = report["segmentation_agreement"]
        console.print(f"segmentation agreement ({seg['method']} vs original): "
                      f"mIoU {seg['miou']:.4f} OA {seg['oa']:.4f} precision "
                      f"{seg['precision']:.4f} recall {seg['recall']:.4f} F1 {seg['f1']:.4f}")
    console.print(f"LPIPS {escape(str(report['LPIPS']))}\nreport: {escape(str(out))}")


def _chosen_methods(methods: str) -> list[str]:
    """The ``--methods`` list, refused (exit 2) when empty or naming an unknown method."""
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in RESTORATION_METHODS]
    if unknown or not chosen:
        raise typer.BadParameter(f"--methods {methods!r}: choose among "
                                 f"{sorted(RESTORATION_METHODS)}")
    return chosen


def _diffgf_model(weights: Path | None) -> DiffGF:
    """The ``--diffgf`` model, loaded before any image is made: missing weights, or a file that
    is not DiffGF weights, end in one line naming the option and the file (exit 1)."""
    from safetensors import SafetensorError

    from producer.restoration.api import MissingWeightsError, resolve_model

    try:
        return resolve_model(weights)
    except MissingWeightsError as exc:
        error(str(exc))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
        # errors reading the configuration name no file
        assert weights is not None  # resolve_model(None) is a MissingWeightsError
        error(f"--diffgf {weights}: its configuration {_diffgf_sidecar(weights)} "
              f"{_sidecar_problem(exc)}")
    except (OSError, ValueError, TypeError, SafetensorError) as exc:
        # DiffGFWeightsError, a truncated safetensors file ...
        assert weights is not None
        error(_named("--diffgf", weights, exc))


def _diffgf_sidecar(weights: Path) -> Path:
    """The JSON configuration read with DiffGF weights (beside a file, inside a folder)."""
    return weights / "diffgf.json" if weights.is_dir() else weights.with_suffix(".json")


def _sidecar_problem(exc: Exception) -> str:
    """What is wrong with a DiffGF configuration, from the error reading it raised."""
    if isinstance(exc, json.JSONDecodeError):
        return f"is not valid JSON ({exc.msg}, line {exc.lineno})"
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text (byte {exc.start}; rule: a JSON file)"
    if isinstance(exc, KeyError):
        return f"lacks field {exc.args[0]!r} (rule: the configuration of each network)"
    return f"is not a JSON object (rule: the networks' configurations by name; {exc})"


def _evaluation_images(data: Path | None, demo: int, synthetic: int, size: int
                       ) -> list[EvalImage]:
    """The complete images to evaluate on: a folder's tiles, demo scenes or synthetic tiles; a
    folder without usable tiles ends in one line naming it (exit 1)."""
    from producer.restoration.evaluate import demo_scenes, folder_images, held_out_synthetic

    if not data:
        return demo_scenes(demo, size) if demo else held_out_synthetic(synthetic, size)
    try:
        return folder_images(data)
    except (OSError, ValueError) as exc:  # rasterio's errors are OSError / ValueError
        error(_named("--data", data, exc))


def _segmenter(weights: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A damage segmenter from SegFormer weights (the producer's whole-scene algorithm, TTA);
    weights it cannot load end in one line naming ``--segmentation`` and the file (exit 1)."""
    from producer.segmentation import load_checkpoint, predict_array

    try:
        model, _ = load_checkpoint(weights)
    except (OSError, ValueError) as exc:  # CheckpointError is a ValueError
        error(_named("--segmentation", weights, exc))
    return lambda rgb: predict_array(model, rgb, device="cpu").labels == 1


def summary_table(report: dict) -> Table:
    """The mean metrics per method, whole image and gaps, as a rich table."""
    table = Table(title=f"Restoration of {report['n_images']} images "
                        f"(mean gap fraction {report['mean_gap_fraction']:.3f})")
    table.add_column("method")
    table.add_column("scope")
    for m in report["metrics"]:
        table.add_column(m, justify="right")
    for method, scopes in report["summary"].items():
        for scope, vals in scopes.items():
            table.add_row(method, scope, *(f"{vals[m]:.4f}" for m in report["metrics"]))
    return table


def _json_safe(obj: object) -> object:
    """Replace inf/nan (not valid JSON) by strings."""
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def register(app: typer.Typer) -> None:
    """Add the restoration commands to ``icedamage``."""
    app.command("train-diffgf")(train_diffgf)
    app.command("evaluate-restoration")(evaluate_restoration)
