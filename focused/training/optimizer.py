"""Optimizer and learning-rate schedule (optax): AdamW, gradient clipping, warmup + cosine / linear / constant."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax

from focused.config import checked_fields

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train`: steps, optimisation and bookkeeping.

    Attributes:
      steps: optimizer steps to run in total (a resumed run continues to this number).
      learning_rate: peak learning rate (after warmup).
      schedule: "constant", "cosine" (to `min_lr_ratio * learning_rate`) or "linear" (likewise).
      accum_steps: micro-batches per step (gradient accumulation); groups of k rows are never split.
      decay_norms_and_embeddings: apply weight decay to norm weights and embeddings too (default: matrices only).
      log_every / save_every / eval_every: in steps; 0 disables saving / eval.
      keep_checkpoints: how many recent checkpoints orbax keeps.
    """

    steps: int = 200
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_embeddings: bool = False
    grad_clip: float = 1.0
    accum_steps: int = 1
    log_every: int = 10
    save_every: int = 100
    eval_every: int = 0
    eval_batches: int = 4
    keep_checkpoints: int = 3
    async_checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"config.train.schedule={self.schedule!r} is not one of {SCHEDULES}")
        for name in ("steps", "accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"config.train.warmup_steps={self.warmup_steps} must be in 0..steps ({self.steps})")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return cls(**checked_fields(cls, values, "config.train"))


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the chosen decay over the remaining steps."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    rest = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
    else:
        decay = optax.linear_schedule(peak, floor, rest)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _decay_mask(params: Any, include_all: bool) -> Any:
    """True for parameters that get weight decay: 2-D kernels (and, optionally, embeddings and norms)."""

    def decays(path: tuple, leaf: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return include_all or name == "kernel"

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with the schedule; decay on matrices only unless configured otherwise."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(
            learning_rate_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda params: _decay_mask(params, cfg.decay_norms_and_embeddings),
        ),
    )
