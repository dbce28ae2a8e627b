"""Chunked ("flash") attention with a hand-written VJP: the same numbers as `memory_attention`'s reference path,
without keeping a `[batch, heads, queries, keys]` float32 score or weight tensor for the backward pass.

Keys come as one or more key sets (e.g. [memory ; local window]) that share ONE softmax; they are never
concatenated, and each set is read `chunk` keys at a time by dynamic slicing (no padded or transposed copy of a
large memory per call). Forward: an online softmax keeps, per query, the running maximum m, the running sum l and
the un-normalised output; at the end out = acc / l, and m and l are saved (not lse = m + log l: for a fully masked
row m is the huge MASKED value, which would swallow log l). Backward: per key chunk the scores are recomputed,
p = exp(s - m) / l, and with D = rowsum(dO * O):

    dV_j = p^T dO      dP = dO V_j^T      dS = p * (dP - D)  (0 where masked)      dQ += dS K_j / sqrt(d)
    dK_j = dS^T Q / sqrt(d)

Residuals: q, the key sets, out, m and l (`[b, kvh, g, t]`), instead of O(t·n·heads) float32 weights.
Masked scores use the reference's finite `MASKED` value, so a fully masked query row gets the same uniform
weights as the reference softmax. When a set's length is not a multiple of `chunk`, its last chunk starts earlier
(overlapping the previous one) and the overlap is excluded with -inf, so every key counts once.

A key set may come with a *fill level* (`limits`: a traced int32 scalar per set, or None): only its first `limit`
keys can be unmasked (a memory buffer filled from slot 0), so the forward pass reads `ceil(limit / chunk)` chunks in
a loop with that many trips instead of all of them, and one compiled program serves every fill level. The backward
pass still reads every chunk (keys past the limit are masked, so their terms are zero): training never sets one.
A fully masked query row (a padding position) then spreads its uniform weights over the keys read, not over all.

Layouts (grouped-query attention: `g = heads // kv_heads` query heads share a key/value head):
    q `[b, t, kvh, g, d]`; per set k, v `[b, n, kvh, d]` (any dtype, cast per chunk), mask `[b, t or 1, n]` bool
    (True = may attend; a leading 1 broadcasts over queries, e.g. a memory mask) → `[b, t, kvh, g, d]`.
    A set marked heads-major (`layouts`) has k `[b, kvh, n, d]` and v `[b, kvh, d, n]`: a dense memory store's
    layout, read in place chunk by chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from focused.memory.core import MASKED, RolledMemory

F32 = jnp.float32
KeySet = tuple[jax.Array, jax.Array, jax.Array]  # keys, values [b, n, kvh, d]; mask [b, t or 1, n]
# einsum letters of a chunk's keys and values: token-major [b, c, kvh, d], or heads-major k [b, kvh, c, d] and
# v [b, kvh, d, c] (a memory store's layout: each head's chunk is read in place, without a transposed copy)
LAYOUTS = {False: ("bckd", "bckd"), True: ("bkcd", "bkdc")}


def _length(key_set: KeySet | RolledMemory, heads_major: bool) -> int:
    if isinstance(key_set, RolledMemory):
        return key_set.keys.shape[1] * key_set.visible.shape[1]
    return key_set[0].shape[2 if heads_major else 1]


def _rolled_chunk(key_set: RolledMemory, j: jax.Array, dtype):
    """Chunk j of a CrossBatch memory: every row's view of row i-1-j (k, v `[b, seq, kvh, d]`, mask `[b, 1, seq]`,
    and the score bias of that view, `[b]` float32 or None)."""
    shift = j + 1
    kj = jnp.roll(key_set.keys, shift, axis=0).astype(dtype)
    vj = jnp.roll(key_set.values, shift, axis=0).astype(dtype)
    seen = jax.lax.dynamic_index_in_dim(key_set.visible, j, axis=1, keepdims=False)  # [b]
    mj = jnp.roll(key_set.mask, shift, axis=0) & seen[:, None]
    bias = None if key_set.bias is None else jax.lax.dynamic_index_in_dim(key_set.bias, j, axis=1, keepdims=False)
    return kj, vj, mj[:, None, :], None, jnp.ones(kj.shape[1], bool), bias


def _chunk_of(key_set: KeySet | RolledMemory, j: jax.Array, chunk: int, dtype, heads_major: bool = False):
    """Chunk j of a key set: k, v (as dtype, `LAYOUTS`), mask `[b, t|1, chunk]`, start, `fresh` `[chunk]` (False
    for keys an earlier chunk already covered) and a per-row score bias `[b]` (CrossBatch's weighted distractors) or
    None."""
    if isinstance(key_set, RolledMemory):
        return _rolled_chunk(key_set, j, dtype)
    k, v, mask = key_set
    start = jnp.minimum(j * chunk, _length(key_set, heads_major) - chunk)
    k_axis, v_axis = (2, 3) if heads_major else (1, 1)
    kj = jax.lax.dynamic_slice_in_dim(k, start, chunk, axis=k_axis).astype(dtype)
    vj = jax.lax.dynamic_slice_in_dim(v, start, chunk, axis=v_axis).astype(dtype)
    mj = jax.lax.dynamic_slice_in_dim(mask, start, chunk, axis=2)
    fresh = start + jnp.arange(chunk) >= j * chunk
    return kj, vj, mj, start, fresh, None


def _scores(
    q: jax.Array,
    k: jax.Array,
    mask: jax.Array,
    fresh: jax.Array,
    scale: float,
    k_spec: str = "bckd",
    bias: jax.Array | None = None,
) -> jax.Array:
    """q `[b, kvh, g, t, d]`, k `[b, c, kvh, d]` (or as `k_spec`), bias None or `[b]` (added to every score of the
    row) → masked scores `[b, kvh, g, t, c]` float32."""
    s = jnp.einsum(f"bkgtd,{k_spec}->bkgtc", q, k, preferred_element_type=F32) * scale
    if bias is not None:
        s = s + bias[:, None, None, None, None]
    s = jnp.where(mask[:, None, None], s, MASKED)
    return jnp.where(fresh, s, -jnp.inf)


def _sizes(key_sets: tuple[KeySet, ...], chunk: int, layouts: tuple[bool, ...]) -> list[tuple[int, int]]:
    """(chunk size, number of chunks) per set: the chunk shrinks to the set's length when that is smaller."""
    out = []
    for key_set, heads_major in zip(key_sets, layouts, strict=True):
        if isinstance(key_set, RolledMemory):  # one chunk = one row's window, one per visible row offset
            out.append((key_set.keys.shape[1], key_set.visible.shape[1]))
            continue
        n = _length(key_set, heads_major)
        size = max(min(chunk, n), 1)
        out.append((size, -(-n // size)))
    return out


def _forward(
    q: jax.Array,
    key_sets: tuple[KeySet, ...],
    chunk: int,
    limits: tuple[jax.Array | None, ...],
    layouts: tuple[bool, ...],
):
    b, t, kvh, g, d = q.shape
    scale = d**-0.5
    qt = jnp.transpose(q, (0, 2, 3, 1, 4))  # [b, kvh, g, t, d]
    carry = (
        jnp.full((b, kvh, g, t), -jnp.inf, F32),
        jnp.zeros((b, kvh, g, t), F32),
        jnp.zeros((b, kvh, g, t, d), F32),
    )
    sizes = _sizes(key_sets, chunk, layouts)
    for key_set, (size, count), limit, heads_major in zip(key_sets, sizes, limits, layouts, strict=True):
        if _length(key_set, heads_major) == 0:
            continue

        def body(j, carry, key_set=key_set, size=size, heads_major=heads_major):
            m, l, acc = carry
            kj, vj, mj, _, fresh, bias = _chunk_of(key_set, j, size, q.dtype, heads_major)
            k_spec, v_spec = LAYOUTS[heads_major]
            s = _scores(qt, kj, mj, fresh, scale, k_spec, bias)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(f"bkgtc,{v_spec}->bkgtd", p.astype(vj.dtype), vj, preferred_element_type=F32)
            return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

        trips = count if limit is None else jnp.clip(-(-jnp.asarray(limit, jnp.int32) // size), 0, count)
        carry = jax.lax.fori_loop(0, trips, body, carry)
    m, l, acc = carry
    out = (acc / l[..., None]).astype(key_sets[-1][1].dtype)  # [b, kvh, g, t, d]
    return jnp.transpose(out, (0, 3, 1, 2, 4)), (m, l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 4))
def flash_attention_sets(
    q: jax.Array,
    key_sets: tuple[KeySet, ...],
    chunk: int = 512,
    limits: tuple[jax.Array | None, ...] | None = None,
    layouts: tuple[bool, ...] | None = None,
) -> jax.Array:
    """Softmax attention `[b, t, kvh, g, d]` over several key sets sharing one softmax (see the module docstring).
    limits: per set, None or the number of leading keys that may be unmasked (int32 scalar). layouts: per set,
    True = heads-major keys `[b, kvh, n, d]` and values `[b, kvh, d, n]` (default: all token-major). The output
    dtype is that of the last set's values."""
    return _forward(q, key_sets, chunk, _limits(key_sets, limits), _layouts(key_sets, layouts))[0]


def _layouts(key_sets: tuple[KeySet, ...], layouts) -> tuple[bool, ...]:
    if layouts is None:
        return (False,) * len(key_sets)
    if len(layouts) != len(key_sets):
        raise ValueError(f"got {len(layouts)} layouts for {len(key_sets)} key sets")
    return tuple(bool(x) for x in layouts)


def _limits(key_sets: tuple[KeySet, ...], limits) -> tuple[jax.Array | None, ...]:
    if limits is None:
        return (None,) * len(key_sets)
    if len(limits) != len(key_sets):
        raise ValueError(f"got {len(limits)} fill limits for {len(key_sets)} key sets")
    return tuple(limits)


def _fwd(q, key_sets, chunk, limits=None, layouts=None):
    out, stats = _forward(q, key_sets, chunk, _limits(key_sets, limits), _layouts(key_sets, layouts))
    return out, (q, key_sets, out, stats, limits)


def _token_major(key_set: KeySet) -> KeySet:
    """A heads-major set (k `[b, kvh, n, d]`, v `[b, kvh, d, n]`) as token-major `[b, n, kvh, d]` (backward only)."""
    k, v, mask = key_set
    return jnp.moveaxis(k, 1, 2), jnp.transpose(v, (0, 3, 1, 2)), mask


def _key_grad(w: jax.Array, x: jax.Array) -> jax.Array:
    """sum over (g, t) of w `[b, kvh, g, t, c]` times x `[b, kvh, g, t, d]` → `[b, c, kvh, d]`. The query heads and
    positions are merged into one axis first (free): XLA:CPU would lay a two-axis contraction out as a transposing
    copy of w fused with its producer."""
    b, kvh, g, t, c = w.shape
    merged = jnp.einsum("bkqc,bkqd->bkcd", w.reshape(b, kvh, g * t, c), x.reshape(b, kvh, g * t, x.shape[-1]))
    return jnp.moveaxis(merged, 1, 2)


def _bwd(chunk, layouts, residuals, d_out):
    q, key_sets, out, (m, l), limits = residuals
    layouts = _layouts(key_sets, layouts)
    # the backward pass reads token-major sets; heads-major ones (inference memory) are transposed once
    key_sets = tuple(_token_major(s) if hm else s for s, hm in zip(key_sets, layouts, strict=True))
    b, t, kvh, g, d = q.shape
    scale = d**-0.5
    qt = jnp.transpose(q, (0, 2, 3, 1, 4))
    do = jnp.transpose(d_out, (0, 2, 3, 1, 4)).astype(F32)  # [b, kvh, g, t, d]
    delta = jnp.sum(do * jnp.transpose(out, (0, 2, 3, 1, 4)).astype(F32), -1)  # [b, kvh, g, t]
    dq = jnp.zeros((b, kvh, g, t, d), F32)
    set_grads = []
    for key_set, (size, count) in zip(key_sets, _sizes(key_sets, chunk, (False,) * len(key_sets)), strict=True):
        k, v = key_set[0], key_set[1]
        rolled = isinstance(key_set, RolledMemory)
        if _length(key_set, False) == 0:
            set_grads.append((jnp.zeros_like(k), jnp.zeros_like(v), None))
            continue

        def body(carry, j, key_set=key_set, size=size, rolled=rolled):
            dq, dk, dv = carry
            kj, vj, mj, start, fresh, bias = _chunk_of(key_set, j, size, q.dtype)
            s = _scores(qt, kj, mj, fresh, scale, bias=bias)
            p = jnp.exp(s - m[..., None]) / l[..., None]  # [b, kvh, g, t, c]
            dv_j = _key_grad(p, do)
            dp = jnp.einsum("bkgtd,bckd->bkgtc", do, vj)
            ds = jnp.where(mj[:, None, None] & fresh, p * (dp - delta[..., None]), 0.0)
            dq = dq + jnp.einsum("bkgtc,bckd->bkgtd", ds, kj) * scale
            dk_j = _key_grad(ds, qt.astype(F32)) * scale
            if rolled:  # row i read row i-1-j: its gradient goes back to that row
                return (dq, dk + jnp.roll(dk_j, -(j + 1), axis=0), dv + jnp.roll(dv_j, -(j + 1), axis=0)), None
            add = lambda full, part: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
                full, jax.lax.dynamic_slice_in_dim(full, start, size, axis=1) + part, start, axis=1
            )
            return (dq, add(dk, dk_j), add(dv, dv_j)), None

        zeros = jnp.zeros(k.shape, F32)
        (dq, dk, dv), _ = jax.lax.scan(body, (dq, zeros, zeros), jnp.arange(count))
        set_grads.append((dk.astype(k.dtype), dv.astype(v.dtype), None))
    set_grads = [
        (jnp.moveaxis(dk, 2, 1), jnp.transpose(dv, (0, 2, 3, 1)), None) if hm else (dk, dv, None)
        for (dk, dv, _), hm in zip(set_grads, layouts, strict=True)
    ]
    set_grads = [  # a CrossBatch memory's cotangent has its own structure (no gradient for its masks)
        RolledMemory(grads[0], grads[1], None, None) if isinstance(key_set, RolledMemory) else grads
        for grads, key_set in zip(set_grads, key_sets, strict=True)
    ]
    dq = jnp.transpose(dq, (0, 3, 1, 2, 4))
    no_limits = None if limits is None else tuple(None for _ in limits)  # integer fill levels have no gradient
    return dq.astype(q.dtype), tuple(set_grads), no_limits


flash_attention_sets.defvjp(_fwd, _bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, chunk: int = 512) -> jax.Array:
    """One key set: q `[b, t, kvh, g, d]`, k, v `[b, n, kvh, d]`, mask `[b, t, n]` → `[b, t, kvh, g, d]`."""
    return flash_attention_sets(q, ((k, v, mask),), chunk)
