"""Optimizer and learning-rate schedule (optax): AdamW, gradient clipping, warmup + cosine / linear / constant."""

from __future__ import annotations

import dataclasses
import math
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
      learning_rate: peak learning rate (after warmup); a finite number >= 0.
      warmup_steps: linear warmup from 0; more than `steps` is clamped to `steps` (see `warnings`).
      schedule: "constant", "cosine" (to `min_lr_ratio * learning_rate`) or "linear" (likewise).
      accum_steps: micro-batches per step (gradient accumulation); groups of k rows are never split.
      decay_norms_and_embeddings: apply weight decay to norm weights and embeddings too (default: matrices only).
      log_every / save_every / eval_every: in steps; 0 disables saving / eval.
      keep_checkpoints: how many recent checkpoints orbax keeps.
      sparse_logits: when every row has at most half its window under the loss (dictionary lookup, passkey
        tuning), compute logits and the last layer only at those positions (`focused.training.step`): the same
        loss and gradients, less work; False = every position.
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
    sparse_logits: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"config.train.schedule={self.schedule!r} is not one of {SCHEDULES}")
        for name in ("steps", "accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "eval_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr_ratio", "eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"config.train.{name}={value} must be a finite number >= 0")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"config.train.{name}={getattr(self, name)} must be in [0, 1)")

    @property
    def effective_warmup_steps(self) -> int:
        """`warmup_steps`, clamped to `steps` (a short run with a long configured warmup still runs)."""
        return min(self.warmup_steps, self.steps)

    def warnings(self) -> list[str]:
        """One line per setting that was adjusted rather than refused."""
        if self.warmup_steps > self.steps:
            return [
                f"config.train.warmup_steps={self.warmup_steps} exceeds config.train.steps={self.steps}: warming "
                f"up over all {self.steps} steps instead (set config.train.warmup_steps to choose)"
            ]
        return []

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return cls(**checked_fields(cls, values, "config.train"))


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the chosen decay over the remaining steps."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warmup_steps = cfg.effective_warmup_steps
    rest = max(cfg.steps - warmup_steps, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
    else:
        decay = optax.linear_schedule(peak, floor, rest)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


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
