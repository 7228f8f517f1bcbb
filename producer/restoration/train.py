"""Training DiffGF on complete images with real SLC-off gap geometry (the SLCANT construction).

Each training example is a complete RGB tile (from a folder of 3-band UInt8 GeoTIFF/PNG tiles,
or synthetic ice-like tiles rendered on the fly) with a simulated Landsat 7 SLC-off mask applied
(``producer.slcoff``: a random window of a 185 km swath at a random scan angle and sweep phase,
so local gap widths range from 0 to 14 px); the complete tile is the ground truth.

Two phases, as in latent diffusion:
1. ``vae_steps``: the autoencoder learns to reconstruct complete tiles (L1 + MSE + a small KL
   term). Afterwards the latent scaling factor is set to 1 / std of the latents.
2. ``unet_steps``: with the autoencoder frozen, the UNet learns the standard noise-prediction
   objective on ``cat([noisy latent, max-pooled mask, masked-image latent])``, the squared error
   weighted up on latent cells that touch a gap (``gap_weight``), where the restoration happens.

Every step draws its data and noise from generators seeded by ``(seed, step)``, so a run is
deterministic and a resumed run continues exactly as an uninterrupted one. Checkpoints are a
safetensors file of the networks plus a JSON of configs and training state, and a safetensors
file of the optimizer state. The three are written one after the other, so the JSON and the
optimizer file each record the sha256 of the networks' file they go with, and a resume refuses
a set that an interrupted checkpoint left mixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from producer.provenance import file_sha256
from producer.restoration.diffgf import (
    DiffGF,
    DiffGFWeightsError,
    build_diffgf,
    conditioning,
    load_diffgf,
    save_diffgf,
    to_model_range,
)
from producer.restoration.tiles import (
    StepArrays,
    TileSampler,
    step_arrays,
    step_source,
)
from producer.writer import atomic_path

CHECKPOINT = "checkpoint.safetensors"
#: The optimizer state saved with each checkpoint (its metadata names the networks' file).
OPTIMIZER = "checkpoint.optim.safetensors"
FINAL = "diffgf.safetensors"
CURVE = "loss_curve.png"
#: The (seed, step) key of the fixed batch that sets the latent scale (never a training step).
SCALE_BATCH_STEP = 2**40


@dataclass
class TrainConfig:
    """What a DiffGF training run does (recorded in every checkpoint)."""

    vae_steps: int = 300
    unet_steps: int = 1000
    batch: int = 4
    crop: int = 128
    lr_vae: float = 2e-4
    lr_unet: float = 2e-4
    kl_weight: float = 1e-6
    gap_weight: float = 4.0
    seed: int = 0
    checkpoint_every: int = 100
    data: str | None = None
    synthetic_pool: int = 100_000

    @property
    def total_steps(self) -> int:
        """Steps of both phases."""
        return self.vae_steps + self.unet_steps


# --------------------------------------------------------------------------------------------
# Data (tiles are drawn in producer.restoration.tiles)
# --------------------------------------------------------------------------------------------


def as_batch(arrays: StepArrays,
             device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """(images in [-1, 1], masks, CPU torch generator) of a step, tensors on ``device``.

    Random draws stay on a CPU generator (and are moved), so a run gives the same numbers on
    any device up to float rounding.
    """
    tiles, masks, noise_seed = arrays
    gen = torch.Generator().manual_seed(noise_seed)
    images = to_model_range(tiles).to(device)
    return images, torch.from_numpy(masks[:, None].astype(np.float32)).to(device), gen


def step_batch(
    sampler: TileSampler, seed: int, step: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """The (images in [-1, 1], masks, torch generator) of one step, a function of (seed, step)."""
    return as_batch(step_arrays(sampler, seed, step), device)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def vae_loss(model: DiffGF, images: torch.Tensor, gen: torch.Generator, kl_weight: float
             ) -> torch.Tensor:
    """Autoencoder reconstruction loss (L1 + MSE + kl_weight × KL)."""
    post = model.vae.encode(images).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(images.device)
    rec = model.vae.decode(z).sample
    return (F.l1_loss(rec, images) + F.mse_loss(rec, images)
            + kl_weight * post.kl().mean() / post.mean[0].numel())


def diffusion_loss(model: DiffGF, images: torch.Tensor, masks: torch.Tensor,
                   gen: torch.Generator, gap_weight: float) -> torch.Tensor:
    """Noise-prediction MSE, weighted ``1 + gap_weight`` on latent cells touching a gap."""
    with torch.no_grad():
        z0 = model.vae.encode(images).latent_dist.mode() * model.vae.config.scaling_factor
        mask_latent, cond = conditioning(model, images, masks)
    noise = torch.randn(z0.shape, generator=gen).to(z0.device)
    n_train = model.scheduler.config.num_train_timesteps
    t = torch.randint(0, n_train, (len(z0),), generator=gen).to(z0.device)
    zt = model.scheduler.add_noise(z0, noise, t)
    pred = model.unet(torch.cat([zt, mask_latent, cond], dim=1), t).sample
    weight = 1.0 + gap_weight * mask_latent
    return ((pred - noise) ** 2 * weight).mean() / weight.mean()


@torch.no_grad()
def latent_scale(model: DiffGF, sampler: TileSampler, seed: int) -> float:
    """1 / std of the latents of a fixed batch, so diffusion sees unit-variance latents."""
    images, _, _ = step_batch(sampler, seed, SCALE_BATCH_STEP, model.vae.device)
    z = model.vae.encode(images).latent_dist.mode()
    return float(1.0 / z.std().clamp_min(1e-6))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stands: the next step and the loss history."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _optim_tensors(opts: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, opt in opts.items():
        for idx, state in opt.state_dict()["state"].items():
            for key, val in state.items():
                out[f"{name}.{idx}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
    return out


def _load_optim(opts: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor]
                ) -> None:
    for name, opt in opts.items():
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in tensors.items():
            n, idx, field_ = key.split(".", 2)
            if n == name:
                state.setdefault(int(idx), {})[field_] = val
        sd["state"] = state
        opt.load_state_dict(sd)


def save_checkpoint(out: Path, model: DiffGF, opts: dict[str, torch.optim.Optimizer],
                    config: TrainConfig, state: TrainState) -> Path:
    """Write the networks (+ JSON) and optimizer state of the run so far; the optimizer file
    records the sha256 of the networks' file it goes with (as the JSON does)."""
    meta = {"train_config": asdict(config), "state": asdict(state)}
    path = save_diffgf(model, out / CHECKPOINT, meta=meta)
    with atomic_path(out / OPTIMIZER) as tmp:
        save_file(_optim_tensors(opts), str(tmp),
                  metadata={"weights_sha256": file_sha256(path)})
    return path


def _load_optimizer_file(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The optimizer tensors of the checkpoint in ``out``; a ValueError naming both files when
    they were saved with other networks than ``checkpoint.safetensors`` (a run stopped between
    writing the two), which would resume with one step's weights and another's moments.
    Files from before the digest was recorded are not checked."""
    path, weights = out / OPTIMIZER, out / CHECKPOINT
    with safe_open(str(path), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get("weights_sha256")
    if recorded is not None and recorded != file_sha256(weights):
        raise ValueError(f"{path} was saved with other weights than {weights} (step {step}): "
                         "the run was stopped between writing the two, so it cannot resume "
                         "exactly; start it again without --resume")
    return load_file(str(path))


def _optimizers(model: DiffGF, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    return {
        "vae": torch.optim.AdamW(model.vae.parameters(), lr=config.lr_vae),
        "unet": torch.optim.AdamW(model.unet.parameters(), lr=config.lr_unet),
    }


#: Settings a resumed run must share with its checkpoint (the autoencoder phase's length may
#: change while the run is still in it); unet_steps and checkpoint_every may change.
RESUME_FIXED = ("seed", "batch", "crop", "vae_steps", "data", "lr_vae", "lr_unet", "kl_weight",
                "gap_weight", "synthetic_pool")


def saved_config(out: Path) -> TrainConfig | None:
    """The configuration recorded with the checkpoint in ``out`` (None without one), read from
    its JSON without loading the networks: a resume continues with it."""
    side = (out / CHECKPOINT).with_suffix(".json")
    if not (out / CHECKPOINT).exists() or not side.exists():
        return None
    try:
        recorded = json.loads(side.read_text())["meta"]["train_config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{side}: no readable training configuration ({error}); start the "
                         "run again without --resume") from None
    known = {k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**known)


def _resume(out: Path, config: TrainConfig, device: torch.device | str = "cpu"
            ) -> tuple[DiffGF, dict[str, torch.optim.Optimizer], TrainState]:
    try:
        model = load_diffgf(out / CHECKPOINT).to(device)
    except DiffGFWeightsError as error:  # e.g. networks and JSON of different checkpoints
        raise ValueError(f"{error}; the run cannot resume from it exactly: start it again "
                         "without --resume") from error
    saved = model.meta.get("train_config", {})
    state = TrainState(**model.meta["state"])
    for key in RESUME_FIXED:
        if key not in saved:
            continue  # a checkpoint from before the field was recorded
        if key == "vae_steps" and state.step < min(saved.get(key, 0), config.vae_steps):
            continue  # still in the autoencoder phase: its length may change without effect
        if saved.get(key) != getattr(config, key):
            raise ValueError(f"{out / CHECKPOINT}: field {key!r} is {saved.get(key)!r} but this "
                             f"run asks for {getattr(config, key)!r}; use a new output folder")
    opts = _optimizers(model, config)
    _load_optim(opts, _load_optimizer_file(out, state.step))
    return model, opts, state


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    model: DiffGF | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    stop_after: int | None = None,
    max_seconds: float | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> tuple[DiffGF, TrainState]:
    """Run (or resume) training into ``out``; returns the model and its final state.

    ``stop_after`` ends the run after that many steps of this call (checkpointing first),
    which tests use to interrupt and resume. ``max_seconds`` is a wall-clock budget for the
    whole run: when it is spent the run ends early as if finished (final weights and curve
    written, the steps actually done recorded). ``device`` runs the networks there (tiles and
    random draws are made on the CPU, so a run is the same on any device up to rounding);
    ``workers`` > 0 draws the steps' tiles in that many processes.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if resume and (out / CHECKPOINT).exists():
        model, opts, state = _resume(out, config, device)
    else:
        model = (model or build_diffgf(seed=config.seed)).to(device)
        opts = _optimizers(model, config)
        state = TrainState()
    sampler = TileSampler(config)
    done_here = 0
    t0 = time.perf_counter() - state.seconds
    with step_source(config, config.seed, state.step, config.total_steps, workers) as batches:
        for arrays in batches:
            step = state.step
            if step == config.vae_steps and config.vae_steps > 0:
                model.vae.register_to_config(
                    scaling_factor=latent_scale(model, sampler, config.seed))
            images, masks, gen = as_batch(arrays, device)
            loss = _train_step(model, opts, config, step, images, masks, gen)
            state.step += 1
            state.losses.append(loss)
            state.seconds = time.perf_counter() - t0
            done_here += 1
            if progress is not None:
                progress(state.step, config.total_steps, loss)
            stopping = stop_after is not None and done_here >= stop_after
            if state.step % config.checkpoint_every == 0 or stopping:
                save_checkpoint(out, model, opts, config, state)
            if stopping:
                return model.eval(), state
            if max_seconds is not None and state.seconds >= max_seconds:
                break
    save_checkpoint(out, model, opts, config, state)
    facts = {"train_config": asdict(config), "state": {"step": state.step,
             "seconds": round(state.seconds, 1),
             "final_vae_loss": _tail_mean(state.losses[:config.vae_steps]),
             "final_diffusion_loss": _tail_mean(state.losses[config.vae_steps:]),
             "stopped_by_time_budget": state.step < config.total_steps,
             "device": torch.device(device).type}}
    save_diffgf(model, out / FINAL, meta=facts, half=True)
    plot_losses(state.losses, config.vae_steps, out / CURVE)
    return model.eval(), state


def _train_step(model: DiffGF, opts: dict[str, torch.optim.Optimizer], config: TrainConfig,
                step: int, images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator
                ) -> float:
    """One optimizer step of the phase ``step`` belongs to; returns the loss."""
    vae_phase = step < config.vae_steps
    model.vae.train(vae_phase)
    model.unet.train(not vae_phase)
    opt = opts["vae" if vae_phase else "unet"]
    loss = (vae_loss(model, images, gen, config.kl_weight) if vae_phase
            else diffusion_loss(model, images, masks, gen, config.gap_weight))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _tail_mean(losses: list[float], n: int = 50) -> float | None:
    return float(np.mean(losses[-n:])) if losses else None


def plot_losses(losses: list[float], vae_steps: int, path: Path) -> Path:
    """Loss curve PNG: both phases, raw and smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (name, part, start) in zip(
        axes, (("autoencoder (L1+MSE+KL)", losses[:vae_steps], 0),
               ("diffusion (gap-weighted noise MSE)", losses[vae_steps:], vae_steps)),
        strict=True,
    ):
        x = np.arange(start, start + len(part))
        ax.plot(x, part, alpha=0.3, lw=0.8)
        if len(part) >= 10:
            k = max(1, len(part) // 20)
            ax.plot(x[k - 1:], np.convolve(part, np.ones(k) / k, mode="valid"), lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
