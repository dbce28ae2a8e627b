"""Rotary position embeddings in the Hugging Face "rotate-half" layout, with pluggable position scaling.

A head vector x of size d is split into halves (x1, x2); position p rotates it to
`x * cos(p * f) + rotate_half(x) * sin(p * f)` with `rotate_half(x) = [-x2, x1]` and frequencies
`f_i = theta^(-2i/d)` repeated for both halves. RoPE at position 0 is the identity, which is what lets memory
keys be stored un-rotated ("as if at position 0").

Scaling (`config.rope_scaling`, a dict with `rope_type`), used by the long-context baselines:
- None / "default": plain RoPE.
- "linear" (position interpolation, PI): positions multiplied by 1/factor, i.e. frequencies divided by factor.
- "ntk": NTK-aware base scaling, theta' = theta * factor^(d/(d-2)) (a static change of base; exports as a new
  `rope_theta`). ABF ("adjusted base frequency") needs no scaling entry: set `rope_theta` (e.g. 5e5 or 1e6).
- "yarn": YaRN, per-frequency blend of interpolation and extrapolation with a ramp between the wavelengths
  given by beta_fast / beta_slow rotations over `original_max_position_embeddings`, and an attention factor
  that multiplies cos and sin (0.1 * ln(factor) + 1 by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "ntk", "yarn")


def _yarn_frequencies(
    base_freq: np.ndarray, head_dim: int, theta: float, scaling: Mapping[str, Any], max_positions: int
) -> tuple[np.ndarray, float]:
    factor = float(scaling["factor"])
    original = int(scaling.get("original_max_position_embeddings") or max_positions)
    beta_fast = float(scaling.get("beta_fast") or 32.0)
    beta_slow = float(scaling.get("beta_slow") or 1.0)

    def dim_for_rotations(rotations: float) -> float:
        # the (fractional) frequency index whose wavelength fits `rotations` times into the original context
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(beta_slow)), head_dim - 1)
    if high == low:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # 1 = extrapolate (high frequency, unchanged), 0 = interpolate (divide by factor)
    freq = base_freq / factor * (1.0 - keep) + base_freq * keep
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return freq, float(attention_factor)


def rope_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None, max_positions: int = 2048
) -> tuple[np.ndarray, float]:
    """Returns (inverse frequencies `[head_dim // 2]`, attention factor multiplying cos/sin)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_scaling type {rope_type!r}; use one of {ROPE_TYPES}")
    if rope_type == "ntk":
        factor = float(scaling["factor"])
        theta = theta * factor ** (head_dim / (head_dim - 2))
    # float32 like the reference implementations, so angles (and logits) agree to the last bit where possible
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    base_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float64)
    if rope_type == "linear":
        return base_freq / float(scaling["factor"]), 1.0
    if rope_type == "yarn":
        return _yarn_frequencies(base_freq, head_dim, theta, scaling, max_positions)
    return base_freq, 1.0


def rope_cos_sin(
    positions: jnp.ndarray, inv_freq: np.ndarray, attention_factor: float = 1.0
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """positions `[batch, seq]` int → (cos, sin) `[batch, seq, head_dim]` float32.

    The angle is computed in float32 from float32 frequencies, as Hugging Face does, so logits match it.
    """
    freq = jnp.asarray(inv_freq, dtype=jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * freq  # [batch, seq, head_dim // 2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, heads_axis: int = 2) -> jnp.ndarray:
    """x `[batch, seq, heads, head_dim]` (or `[batch, heads, seq, head_dim]` with heads_axis=1), cos/sin
    `[batch, seq, head_dim]` → rotated x (same dtype as x)."""
    cos = jnp.expand_dims(cos, heads_axis).astype(x.dtype)
    sin = jnp.expand_dims(sin, heads_axis).astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def export_rope_fields(theta: float, scaling: Mapping[str, Any] | None, head_dim: int) -> dict[str, Any]:
    """The (`rope_theta`, `rope_scaling`) pair a Hugging Face config needs to reproduce these frequencies."""
    if not scaling or scaling.get("rope_type", "default") == "default":
        return {"rope_theta": theta, "rope_scaling": None}
    if scaling["rope_type"] == "ntk":
        return {
            "rope_theta": theta * float(scaling["factor"]) ** (head_dim / (head_dim - 2)),
            "rope_scaling": None,
        }
    return {"rope_theta": theta, "rope_scaling": dict(scaling)}
