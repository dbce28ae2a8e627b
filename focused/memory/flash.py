"""Chunked ("flash") attention with a hand-written VJP: the same numbers as `memory_attention`'s reference path,
without keeping a `[batch, heads, queries, keys]` float32 score or weight tensor for the backward pass.

Forward: keys are visited in chunks of `chunk`; an online softmax keeps, per query, the running maximum m, the
running sum l and the un-normalised output; at the end out = acc / l, and m and l are saved (not lse = m + log l:
for a fully masked row m is the huge MASKED value, which would swallow log l). Backward: per key chunk the scores
are recomputed, p = exp(s - m) / l, and with D = rowsum(dO * O):

    dV_j = p^T dO      dP = dO V_j^T      dS = p * (dP - D)  (0 where masked)      dQ += dS K_j / sqrt(d)
    dK_j = dS^T Q / sqrt(d)

Residuals: q, k, v, the mask, out, m and l (`[b, kvh, g, t]`): O(t·d + t·n/8) bytes instead of O(t·n·4·heads).
Masked scores use the reference's finite `MASKED` value, so a fully masked query row gets the same uniform
weights as the reference softmax; keys added to pad n up to a multiple of `chunk` get -inf and never count.

Layouts (grouped-query attention: `g = heads // kv_heads` query heads share a key/value head):
    q `[b, t, kvh, g, d]`, k, v `[b, n, kvh, d]`, mask `[b, t, n]` bool (True = may attend) → `[b, t, kvh, g, d]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from focused.memory.core import MASKED

F32 = jnp.float32


def _chunks(k: jax.Array, v: jax.Array, mask: jax.Array, chunk: int):
    """Pads the key axis to a multiple of `chunk`; returns k, v `[c, b, chunk, kvh, d]`, mask `[c, b, t, chunk]`,
    real `[c, chunk]` (False for padding keys)."""
    b, n, kvh, d = k.shape
    t = mask.shape[1]
    pad = -n % chunk
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad)))
    c = (n + pad) // chunk
    real = (jnp.arange(n + pad) < n).reshape(c, chunk)
    k = jnp.moveaxis(k.reshape(b, c, chunk, kvh, d), 1, 0)
    v = jnp.moveaxis(v.reshape(b, c, chunk, kvh, d), 1, 0)
    mask = jnp.moveaxis(mask.reshape(b, t, c, chunk), 2, 0)
    return k, v, mask, real


def _scores(q: jax.Array, k: jax.Array, mask: jax.Array, real: jax.Array, scale: float) -> jax.Array:
    """q `[b, kvh, g, t, d]`, k `[b, c, kvh, d]` → masked scores `[b, kvh, g, t, c]` float32."""
    s = jnp.einsum("bkgtd,bckd->bkgtc", q, k, preferred_element_type=F32) * scale
    s = jnp.where(mask[:, None, None], s, MASKED)
    return jnp.where(real, s, -jnp.inf)


def _forward(q, k, v, mask, chunk):
    b, t, kvh, g, d = q.shape
    scale = d**-0.5
    qt = jnp.transpose(q, (0, 2, 3, 1, 4))  # [b, kvh, g, t, d]
    kc, vc, mc, real = _chunks(k, v, mask, chunk)

    def body(carry, xs):
        m, l, acc = carry
        kj, vj, mj, rj = xs
        s = _scores(qt, kj, mj, rj, scale)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        pv = jnp.einsum("bkgtc,bckd->bkgtd", p.astype(v.dtype), vj, preferred_element_type=F32)
        return (m_new, l, acc * corr[..., None] + pv), None

    init = (
        jnp.full((b, kvh, g, t), -jnp.inf, F32),
        jnp.zeros((b, kvh, g, t), F32),
        jnp.zeros((b, kvh, g, t, d), F32),
    )
    (m, l, acc), _ = jax.lax.scan(body, init, (kc, vc, mc, real))
    out = (acc / l[..., None]).astype(v.dtype)  # [b, kvh, g, t, d]
    return jnp.transpose(out, (0, 3, 1, 2, 4)), (m, l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, chunk: int = 512) -> jax.Array:
    """Softmax attention `[b, t, kvh, g, d]` over keys/values `[b, n, kvh, d]` where `mask` `[b, t, n]` allows,
    visiting keys `chunk` at a time (see the module docstring)."""
    return _forward(q, k, v, mask, chunk)[0]


def _fwd(q, k, v, mask, chunk):
    out, stats = _forward(q, k, v, mask, chunk)
    return out, (q, k, v, mask, out, stats)


def _bwd(chunk, residuals, d_out):
    q, k, v, mask, out, (m, l) = residuals
    b, t, kvh, g, d = q.shape
    n = k.shape[1]
    scale = d**-0.5
    qt = jnp.transpose(q, (0, 2, 3, 1, 4))
    do = jnp.transpose(d_out, (0, 2, 3, 1, 4)).astype(F32)  # [b, kvh, g, t, d]
    delta = jnp.sum(do * jnp.transpose(out, (0, 2, 3, 1, 4)).astype(F32), -1)  # [b, kvh, g, t]
    kc, vc, mc, real = _chunks(k, v, mask, chunk)

    def body(dq, xs):
        kj, vj, mj, rj = xs
        s = _scores(qt, kj, mj, rj, scale)
        p = jnp.exp(s - m[..., None]) / l[..., None]  # [b, kvh, g, t, c]
        dv = jnp.einsum("bkgtc,bkgtd->bckd", p, do)
        dp = jnp.einsum("bkgtd,bckd->bkgtc", do, vj.astype(F32))
        ds = jnp.where(mj[:, None, None] & rj, p * (dp - delta[..., None]), 0.0)
        dq = dq + jnp.einsum("bkgtc,bckd->bkgtd", ds, kj.astype(F32)) * scale
        dk = jnp.einsum("bkgtc,bkgtd->bckd", ds, qt.astype(F32)) * scale
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(body, jnp.zeros((b, kvh, g, t, d), F32), (kc, vc, mc, real))
    dk = jnp.moveaxis(dk, 0, 1).reshape(b, -1, kvh, d)[:, :n]
    dv = jnp.moveaxis(dv, 0, 1).reshape(b, -1, kvh, d)[:, :n]
    dq = jnp.transpose(dq, (0, 3, 1, 2, 4))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


flash_attention.defvjp(_fwd, _bwd)
