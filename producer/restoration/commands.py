"""``icedamage train-diffgf`` and ``icedamage evaluate-restoration``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.spec import RESTORATION_METHODS
from producer.writer import atomic_path

if TYPE_CHECKING:
    from producer.restoration.train import TrainConfig

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def train_diffgf(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for checkpoints, final weights, loss curve.")],
    data: Annotated[Path | None, typer.Option(
        help="Folder of complete 3-band UInt8 GeoTIFF/PNG tiles; default: synthetic ice tiles.",
        exists=True, file_okay=False)] = None,
    vae_steps: Annotated[int, typer.Option(help="Autoencoder steps (phase 1).")] = 300,
    unet_steps: Annotated[int, typer.Option(help="Diffusion UNet steps (phase 2).")] = 900,
    batch: Annotated[int, typer.Option(help="Tiles per step.")] = 4,
    crop: Annotated[int, typer.Option(help="Training tile size (multiple of 16).")] = 128,
    lr_vae: Annotated[float, typer.Option(help="AdamW learning rate, autoencoder.")] = 2e-4,
    lr_unet: Annotated[float, typer.Option(help="AdamW learning rate, UNet.")] = 2e-4,
    seed: Annotated[int, typer.Option(help="Seed of data, masks, noise and init.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    resume: Annotated[bool, typer.Option(
        help="Continue from OUT/checkpoint.safetensors with the run's own settings, changed "
             "only by the options given now (unet-steps, checkpoint-every; others must "
             "match).")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch default).")] = 0,
    max_minutes: Annotated[float | None, typer.Option(
        help="Wall-clock budget; the run ends early (weights written) when it is spent.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(
        help="Processes drawing training tiles ahead (0: none; a GPU needs several).")] = 0,
) -> None:
    """Train DiffGF on complete images with simulated SLC-off gaps (SLCANT construction)."""
    import torch

    from producer.restoration.train import CHECKPOINT, CURVE, FINAL, TrainConfig, train
    from producer.segmentation.inference import resolve_device

    if crop % 16:
        raise typer.BadParameter(f"--crop {crop} must be a multiple of 16")
    if threads:
        torch.set_num_threads(threads)
    if (out / FINAL).exists() and not resume:
        console.print(f"[red]{out / FINAL} exists; pass --resume to continue that run or "
                      "choose another --out")
        raise typer.Exit(1)
    config = TrainConfig(vae_steps=vae_steps, unet_steps=unet_steps, batch=batch, crop=crop,
                         lr_vae=lr_vae, lr_unet=lr_unet, seed=seed,
                         checkpoint_every=checkpoint_every,
                         data=str(data.resolve()) if data else None)
    if resume:
        try:
            config = _resumed_config(ctx, out, config)
        except ValueError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(1) from exc
    if resume and not (out / CHECKPOINT).exists():
        console.print(f"no checkpoint in {out}; starting a new run")
    with _progress() as bar:
        task = bar.add_task("train-diffgf", total=config.total_steps, info="")

        def report(step: int, total: int, loss: float) -> None:
            phase = "vae" if step <= config.vae_steps else "unet"
            bar.update(task, completed=step, info=f"{phase} loss {loss:.4f}")

        try:
            _, state = train(config, out, resume=resume, progress=report,
                             max_seconds=None if max_minutes is None else 60 * max_minutes,
                             device=resolve_device(device), workers=workers)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(1) from exc
    console.print(f"weights: {out / FINAL} ({state.step} steps, {state.seconds:.0f} s); "
                  f"loss curve: {out / CURVE}")


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
    synthetic: Annotated[int, typer.Option(help="Held-out synthetic tiles when no --data.")] = 16,
    demo: Annotated[int, typer.Option(
        help="Evaluate on this many demo Landsat 7 SLC-off scenes instead (their own gaps; "
             "reference: the same date rendered without gaps), --size px a side.")] = 0,
    size: Annotated[int, typer.Option(help="Synthetic tile or demo window size.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of masks and sampling.")] = 0,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 20,
    segmentation: Annotated[Path | None, typer.Option(
        help="SegFormer weights: also report the damage-map agreement of restored vs original "
             "(Table 5 style; its precision/recall give λ_restoration).", exists=True,
        dir_okay=False)] = None,
) -> None:
    """Simulate SLC-off on complete images, restore, report PSNR/SSIM/UIQI/CC/RMSE."""
    from producer.restoration.api import MissingWeightsError, resolve_model
    from producer.restoration.evaluate import (
        demo_scenes,
        evaluate,
        folder_images,
        held_out_synthetic,
    )

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in RESTORATION_METHODS]
    if unknown or not chosen:
        raise typer.BadParameter(f"--methods {methods!r}: choose among "
                                 f"{sorted(RESTORATION_METHODS)}")
    if demo and data:
        raise typer.BadParameter("--demo and --data exclude each other: choose one set of images")
    model = None
    if "DiffGF" in chosen:
        try:
            model = resolve_model(diffgf)
        except MissingWeightsError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(1) from exc
    images = (folder_images(data) if data else demo_scenes(demo, size) if demo
              else held_out_synthetic(synthetic, size))
    segment = _segmenter(segmentation) if segmentation else None
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
    console.print(f"LPIPS {report['LPIPS']}\nreport: {out}")


def _segmenter(weights: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A damage segmenter from SegFormer weights (the producer's whole-scene algorithm, TTA)."""
    from producer.segmentation import load_checkpoint, predict_array

    model, _ = load_checkpoint(weights)
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
