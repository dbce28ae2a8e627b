"""CrossBatch memory read by blocks of rows: large matrix products instead of one small product per row and offset.

Under CrossBatch (`focused.memory.crossbatch`) row i reads the windows of rows i-1 … i-r. The flash kernel's
rolled read (`RolledMemory` in `focused.memory.flash`) takes one offset j per step: every row against row i-1-j,
a `[queries, seq]` score tile per row, and a rolled copy of all keys and values per step. For a large range r
(dictionary lookup trains at r = 255 and 511) that is r copies of the batch's keys and values and r·batch tiny
products. Here a block of `block` consecutive rows reads the contiguous rows i0-r … i0+block-2 that any of them
sees, `chunk` rows at a time: one `[block · queries · heads/kv_head, chunk · seq]` score tile per kv head,
sliced out of the keys in place. A key row outside a query row's band (offset not in 0..r-1) is excluded with
-inf; one inside it that the row does not see (`visible`, padding) gets the reference's finite MASKED score.
With a row stride s (a loss only on the last row of each k-group, `focused.training.step.loss_rows`) the query
rows are s-1, 2s-1, … and a block of them spans s·(block - 1) + r memory rows.

Everything shares one float32 softmax with the row's own window (local attention, computed first as the starting
point of the online softmax). Forward and backward follow `focused.memory.flash` (m and l saved, scores
recomputed per chunk; see its docstring for the gradient formulas). The useful share of a block's band is
r / (block + r - 1), so `block_rows` keeps blocks at most a quarter of r, and ranges below
`core.BANDED_MIN_RANGE` keep the rolled read.

One difference from the reference, where it cannot matter: a query that may attend to nothing at all (a padding
position with no valid key) averages the values of the keys it reads, and rows before the first (i - 1 - j < 0)
read zeros here where the reference reads rows wrapped around from the end of the batch. Such a position has no
loss and feeds no valid key, so nothing trained depends on it.

Layouts: q `[b, t, kvh, g, d]`; memory keys, values `[b, seq, kvh, d]` (raw), key_valid `[b, seq]`, visible
`[b, r]` (row i sees row i-1-j) and an optional float bias of that shape (added to those keys' scores,
`CrossBatch.distractor_weight`); local keys, values `[b, seq, kvh, d]`, local mask `[b, t, seq]` → `[b, t, kvh, g, d]`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from focused.memory.core import MASKED

F32 = jnp.float32
BLOCK_QUERIES = 1024  # query positions of a block of rows (per query head)
CHUNK_KEYS = 1024  # memory keys read per inner step


def block_rows(batch: int, queries: int, range_: int) -> int:
    """Rows per block: about BLOCK_QUERIES queries, at most range_/4 rows, and a divisor of batch."""
    target = max(1, min(BLOCK_QUERIES // max(queries, 1), range_ // 4))
    return max(r for r in range(1, min(target, batch) + 1) if batch % r == 0)


def chunk_rows(seq: int) -> int:
    """Memory rows read per inner step: about CHUNK_KEYS keys."""
    return max(1, CHUNK_KEYS // max(seq, 1))


def banded_crossbatch_attention(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    key_valid: jax.Array,
    visible: jax.Array,
    local: tuple[jax.Array, jax.Array, jax.Array],
    stride: int = 1,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Attention of q over [CrossBatch memory ; the row's own window] in one softmax (see the module docstring).

    stride s > 1: q, visible and the local set hold only rows s-1, 2s-1, … of the batch (query row i is batch row
    s·i + s - 1; a sparse loss on the last row of each k-group); keys, values and key_valid hold every row.
    bias: None or `[b, r]` float32 like visible, added to the scores of row i's keys from row i-1-j."""
    bq, t = q.shape[:2]
    r = visible.shape[1]
    block = block_rows(bq, t, max(r // stride, 1))
    return _banded(q, keys, values, key_valid, (visible, bias), local, block, chunk_rows(keys.shape[1]), stride)


def _geometry(batch: int, range_: int, block: int, chunk: int, stride: int) -> tuple[int, int]:
    """(chunks per block, rows of padding after the batch) for memory padded with range_ rows in front; a block of
    `block` query rows spans stride·(block - 1) + range_ memory rows."""
    chunks = math.ceil((stride * (block - 1) + range_) / chunk)
    last_start = batch - stride * block + stride - 1  # padded row where the last block's band starts
    return chunks, max(0, last_start + chunks * chunk - (batch + range_))


def _pad_rows(x: jax.Array, front: int, back: int) -> jax.Array:
    return jnp.pad(x, [(front, back)] + [(0, 0)] * (x.ndim - 1))


def _padded(keys, values, key_valid, range_, block, chunk, stride):
    """(chunks per block, keys, values and key_valid padded with range_ rows in front and enough behind that every
    block's last chunk lies inside)."""
    chunks, back = _geometry(keys.shape[0], range_, block, chunk, stride)
    pad = [_pad_rows(x, range_, back) for x in (keys, values, key_valid)]
    return chunks, *pad


def _blocked(x: jax.Array, block: int) -> jax.Array:
    """`[b, ...]` → `[b / block, block, ...]` (the scan axis first)."""
    return x.reshape(x.shape[0] // block, block, *x.shape[1:])


def _merge_queries(x: jax.Array) -> jax.Array:
    """A block's `[rows, t, kvh, g, d']` → `[kvh, g * rows * t, d']` (one matrix of queries per kv head)."""
    rows, t, kvh, g = x.shape[:4]
    return jnp.transpose(x, (2, 3, 0, 1, 4)).reshape(kvh, g * rows * t, *x.shape[4:])


def _split_queries(x: jax.Array, rows: int, t: int) -> jax.Array:
    """Inverse of `_merge_queries`."""
    kvh, _, *rest = x.shape
    return jnp.transpose(x.reshape(kvh, -1, rows, t, *rest), (2, 3, 0, 1, *range(4, 4 + len(rest))))


def _band_start(i0: jax.Array, stride: int) -> jax.Array:
    """The padded memory row where the band of the block starting at query row i0 begins (batch row
    stride·i0 + stride - 1 - range_, padded by range_ rows)."""
    return stride * i0 + stride - 1


def _chunk_scores(qm, keys_p, valid_p, rows_seen, i0, c, t, block, chunk, range_, scale, stride):
    """Scores `[kvh, g·block·t, chunk·seq]` of a block's merged queries (query rows i0 …) against memory chunk c
    (padded rows from `_band_start` + c·chunk; padded arrays start range_ rows before the batch), the chunk's keys,
    and where its keys may be attended `[block·t, chunk·seq]`. rows_seen: (visible, bias or None), `[b, r]` each."""
    visible, bias = rows_seen
    seq = keys_p.shape[1]
    start = _band_start(i0, stride) + c * chunk
    kc = jax.lax.dynamic_slice_in_dim(keys_p, start, chunk, axis=0)  # [chunk, seq, kvh, d]
    valid = jax.lax.dynamic_slice_in_dim(valid_p, start, chunk, axis=0)  # [chunk, seq]
    q_rows = stride * (i0 + jnp.arange(block)) + stride - 1  # batch rows
    k_rows = start - range_ + jnp.arange(chunk)
    offset = q_rows[:, None] - 1 - k_rows[None, :]  # [block, chunk]
    in_band = (offset >= 0) & (offset < range_)
    at_offset = jnp.clip(offset, 0, range_ - 1)
    seen = jnp.take_along_axis(jax.lax.dynamic_slice_in_dim(visible, i0, block, axis=0), at_offset, axis=1)
    allowed = (in_band & seen)[:, None, :, None] & valid[None, None]  # [block, 1, chunk, seq]
    allowed = jnp.broadcast_to(allowed, (block, t, chunk, seq)).reshape(block * t, chunk * seq)
    band = jnp.broadcast_to(in_band[:, None, :, None], (block, t, chunk, seq)).reshape(block * t, chunk * seq)
    kvh = kc.shape[2]
    kc = kc.reshape(chunk * seq, kvh, -1).astype(qm.dtype)
    s = jnp.einsum("kqd,ckd->kqc", qm, kc, preferred_element_type=F32) * scale
    g = qm.shape[1] // (block * t)
    s = s.reshape(kvh, g, block * t, -1)
    if bias is not None:
        extra = jnp.take_along_axis(jax.lax.dynamic_slice_in_dim(bias, i0, block, axis=0), at_offset, axis=1)
        s = s + jnp.broadcast_to(extra[:, None, :, None], (block, t, chunk, seq)).reshape(block * t, chunk * seq)
    s = jnp.where(allowed, s, MASKED)
    s = jnp.where(band, s, -jnp.inf).reshape(kvh, g * block * t, -1)
    return s, kc, allowed


def _local(q, k, v, mask, scale):
    """The row's own window: scores `[b, kvh, g, t, s]` (MASKED where not allowed)."""
    s = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype), preferred_element_type=F32) * scale
    return jnp.where(mask[:, None, None], s, MASKED)


def _forward(q, keys, values, key_valid, rows_seen, local, block, chunk, stride):
    b, t, kvh, g, d = q.shape
    r = rows_seen[0].shape[1]
    scale = d**-0.5
    chunks, keys_p, values_p, valid_p = _padded(keys, values, key_valid, r, block, chunk, stride)
    lk, lv, lmask = local
    s_loc = _local(q, lk, lv, lmask, scale)
    m0 = s_loc.max(-1)
    p = jnp.exp(s_loc - m0[..., None])
    l0 = p.sum(-1)
    acc0 = jnp.einsum("bkgts,bskd->btkgd", p.astype(lv.dtype), lv, preferred_element_type=F32)
    # per block: the carry as merged queries [kvh, g * block * t]
    m0, l0 = (jnp.moveaxis(x, 3, 1)[..., None] for x in (m0, l0))  # [b, t, kvh, g, 1]

    def one_block(_, xs):
        i0, qb, mb, lb, ab = xs
        qm = _merge_queries(qb)
        carry = (_merge_queries(mb)[..., 0], _merge_queries(lb)[..., 0], _merge_queries(ab))

        def body(c, carry):
            m, l, acc = carry
            s, _, _ = _chunk_scores(qm, keys_p, valid_p, rows_seen, i0, c, t, block, chunk, r, scale, stride)
            vc = jax.lax.dynamic_slice_in_dim(values_p, _band_start(i0, stride) + c * chunk, chunk, axis=0)
            vc = vc.reshape(chunk * vc.shape[1], kvh, d)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum("kqc,ckd->kqd", p.astype(vc.dtype), vc, preferred_element_type=F32)
            return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

        m, l, acc = jax.lax.fori_loop(0, chunks, body, carry)
        out = _split_queries(acc / l[..., None], block, t)
        return None, (out, _split_queries(m, block, t), _split_queries(l, block, t))

    starts = jnp.arange(0, b, block)
    xs = (starts, *(_blocked(x, block) for x in (q, m0, l0, acc0)))
    _, (out, m, l) = jax.lax.scan(one_block, None, xs)
    out = out.reshape(b, t, kvh, g, d).astype(lv.dtype)
    return out, (m.reshape(b, t, kvh, g), l.reshape(b, t, kvh, g))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _banded(q, keys, values, key_valid, rows_seen, local, block, chunk, stride=1):
    return _forward(q, keys, values, key_valid, rows_seen, local, block, chunk, stride)[0]


def _fwd(q, keys, values, key_valid, rows_seen, local, block, chunk, stride=1):
    out, stats = _forward(q, keys, values, key_valid, rows_seen, local, block, chunk, stride)
    return out, (q, keys, values, key_valid, rows_seen, local, out, stats)


def _bwd(block, chunk, stride, residuals, d_out):
    q, keys, values, key_valid, rows_seen, local, out, (m, l) = residuals
    b, t, kvh, g, d = q.shape
    r = rows_seen[0].shape[1]
    scale = d**-0.5
    chunks, keys_p, values_p, valid_p = _padded(keys, values, key_valid, r, block, chunk, stride)
    do = d_out.astype(F32)
    delta = jnp.sum(do * out.astype(F32), -1)  # [b, t, kvh, g]
    lk, lv, lmask = local
    # the own window, all rows at once
    s_loc = _local(q, lk, lv, lmask, scale)
    m_t, l_t, delta_t = (jnp.transpose(x, (0, 2, 3, 1)) for x in (m, l, delta))  # [b, kvh, g, t]
    p = jnp.exp(s_loc - m_t[..., None]) / l_t[..., None]
    do_t = jnp.transpose(do, (0, 2, 3, 1, 4))  # [b, kvh, g, t, d]
    d_lv = jnp.einsum("bkgts,bkgtd->bskd", p, do_t)
    dp = jnp.einsum("bkgtd,bskd->bkgts", do_t, lv.astype(F32))
    ds = jnp.where(lmask[:, None, None], p * (dp - delta_t[..., None]), 0.0)
    dq_loc = jnp.einsum("bkgts,bskd->btkgd", ds, lk.astype(F32)) * scale
    d_lk = jnp.einsum("bkgts,btkgd->bskd", ds, q.astype(F32)) * scale

    def one_block(carry, xs):
        dk_p, dv_p = carry
        i0, qb, dob, mb, lb, deltab = xs
        qm, dom = _merge_queries(qb), _merge_queries(dob)
        mm, lm, dm = (_merge_queries(x[..., None])[..., 0] for x in (mb, lb, deltab))
        qf = qm.astype(F32)

        def body(c, inner):
            dq, dk_p, dv_p = inner
            s, kc, allowed = _chunk_scores(qm, keys_p, valid_p, rows_seen, i0, c, t, block, chunk, r, scale, stride)
            start = _band_start(i0, stride) + c * chunk
            vc = jax.lax.dynamic_slice_in_dim(values_p, start, chunk, axis=0)
            seq = vc.shape[1]
            vc = vc.reshape(chunk * seq, kvh, d).astype(F32)
            p = jnp.exp(s - mm[..., None]) / lm[..., None]  # [kvh, Q, c]
            dv_c = jnp.einsum("kqc,kqd->ckd", p, dom)
            dp = jnp.einsum("kqd,ckd->kqc", dom, vc)
            ok = jnp.broadcast_to(allowed, (g, *allowed.shape)).reshape(-1, allowed.shape[-1])
            ds = jnp.where(ok, p * (dp - dm[..., None]), 0.0)
            dq = dq + jnp.einsum("kqc,ckd->kqd", ds, kc.astype(F32)) * scale
            dk_c = jnp.einsum("kqc,kqd->ckd", ds, qf) * scale

            def add(full, part):
                part = part.reshape(chunk, seq, kvh, d)
                return jax.lax.dynamic_update_slice_in_dim(
                    full, jax.lax.dynamic_slice_in_dim(full, start, chunk, axis=0) + part, start, axis=0
                )

            return dq, add(dk_p, dk_c), add(dv_p, dv_c)

        dq0 = jnp.zeros(qm.shape, F32)
        dq, dk_p, dv_p = jax.lax.fori_loop(0, chunks, body, (dq0, dk_p, dv_p))
        return (dk_p, dv_p), _split_queries(dq, block, t)

    zeros = jnp.zeros(keys_p.shape, F32)
    starts = jnp.arange(0, b, block)
    xs = (starts, *(_blocked(x, block) for x in (q, do, m, l, delta)))
    (dk_p, dv_p), dq_mem = jax.lax.scan(one_block, (zeros, zeros), xs)
    dq = dq_mem.reshape(q.shape) + dq_loc
    d_keys = dk_p[r : r + keys.shape[0]].astype(keys.dtype)
    d_values = dv_p[r : r + keys.shape[0]].astype(values.dtype)
    d_local = (d_lk.astype(lk.dtype), d_lv.astype(lv.dtype), None)
    d_rows_seen = (None, None if rows_seen[1] is None else jnp.zeros_like(rows_seen[1]))
    return dq.astype(q.dtype), d_keys, d_values, None, d_rows_seen, d_local


_banded.defvjp(_fwd, _bwd)
