"""Independent numpy re-computations of what the model must compute (DESIGN §3), used as test oracles.

Written from the equations, not from the library: a LLaMA forward pass where memory layers attend to the
concatenation [memory keys (un-rotated) ; local causal keys (rotated)] with ONE softmax.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from focused.model.config import LlamaConfig


def params_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
    """Flat `{"model.layers.0.self_attn.q_proj.kernel": array}` float64 copies of the model's parameters."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(p) for p in path): np.asarray(var[...], np.float64) for path, var in flat}


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x `[seq, heads, dim]` rotated (rotate-half layout) at integer positions `[seq]`."""
    dim = x.shape[-1]
    freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    ang = positions[:, None] * freq[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    half = dim // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + rot * sin[:, None]


def rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def attend(q, k_loc, v_loc, loc_ok, k_mem, v_mem, mem_ok):
    """One query head: q `[t, d]`, local `[s, d]` + mask `[t, s]`, memory `[m, d]` + mask `[m]` → `[t, d]`."""
    d = q.shape[-1]
    s_loc = np.where(loc_ok, q @ k_loc.T / np.sqrt(d), -1e30)
    s_mem = np.where(mem_ok[None], q @ k_mem.T / np.sqrt(d), -1e30)
    w = softmax(np.concatenate([s_mem, s_loc], -1))
    return w[:, : len(k_mem)] @ v_mem + w[:, len(k_mem) :] @ v_loc


def forward_long_reference(
    config: LlamaConfig,
    p: dict[str, np.ndarray],
    ids: np.ndarray,
    valid: np.ndarray | None = None,
    memory_windows: int | None = None,
    starts: list[int] | None = None,
) -> np.ndarray:
    """Logits `[n, vocab]` for ONE row `ids [n]`, processed in windows of max_position_embeddings.

    memory_windows: keep only the last this-many windows in memory (None = all previous windows).
    starts: explicit window start offsets (default 0, W, 2W, ...); each window sees earlier windows as memory.
    """
    n = len(ids)
    valid = np.ones(n, bool) if valid is None else valid.astype(bool)
    w = config.max_position_embeddings
    h, kvh, d = config.num_attention_heads, config.kv_heads, config.head_size
    g = h // kvh
    mem = {i: [] for i in config.mem_layers}  # layer -> list of (k_raw, v, valid) per window
    out = []
    starts = list(range(0, n, w)) if starts is None else list(starts)
    for start, stop in zip(starts, [*starts[1:], n], strict=True):
        tok = ids[start:stop]
        ok = valid[start:stop]
        t = len(tok)
        pos = np.arange(t)
        causal = np.tril(np.ones((t, t), bool)) & ok[None]
        x = p["model.embed_tokens.embedding"][tok]
        for layer in range(config.num_hidden_layers):
            pre = f"model.layers.{layer}."
            y = rms(x, p[pre + "input_layernorm.weight"], config.rms_norm_eps)
            q = (y @ p[pre + "self_attn.q_proj.kernel"]).reshape(t, h, d)
            k = (y @ p[pre + "self_attn.k_proj.kernel"]).reshape(t, kvh, d)
            v = (y @ p[pre + "self_attn.v_proj.kernel"]).reshape(t, kvh, d)
            is_mem = layer in config.mem_layers
            if is_mem and config.mem_key_norm:  # each key head scaled to a root-mean-square of 1
                k = k / np.sqrt((k**2).mean(-1, keepdims=True) + config.rms_norm_eps)
            k_raw = k
            if not is_mem or config.mem_positionals:
                q, k = rope(q, pos, config.rope_theta), rope(k, pos, config.rope_theta)
            windows = mem[layer] if is_mem else []
            if memory_windows is not None:
                windows = windows[len(windows) - memory_windows :] if memory_windows else []
            k_mem = np.concatenate([m[0] for m in windows] or [np.zeros((0, kvh, d))])
            v_mem = np.concatenate([m[1] for m in windows] or [np.zeros((0, kvh, d))])
            ok_mem = np.concatenate([m[2] for m in windows] or [np.zeros(0, bool)])
            heads = [
                attend(q[:, hh], k[:, hh // g], v[:, hh // g], causal, k_mem[:, hh // g], v_mem[:, hh // g], ok_mem)
                for hh in range(h)
            ]
            x = x + np.stack(heads, 1).reshape(t, h * d) @ p[pre + "self_attn.o_proj.kernel"]
            y = rms(x, p[pre + "post_attention_layernorm.weight"], config.rms_norm_eps)
            gate = y @ p[pre + "mlp.gate_proj.kernel"]
            x = x + (gate / (1 + np.exp(-gate)) * (y @ p[pre + "mlp.up_proj.kernel"])) @ p[pre + "mlp.down_proj.kernel"]
            if is_mem:
                mem[layer].append((k_raw, v, ok))
        x = rms(x, p["model.norm.weight"], config.rms_norm_eps)
        head = p["model.embed_tokens.embedding"].T if config.tie_word_embeddings else p["lm_head.kernel"]
        out.append(x @ head)
    return np.concatenate(out)


def randomize(model: nnx.Module, seed: int, scale: float = 0.02) -> None:
    """Replaces every parameter with random values: N(0, scale) matrices, 1 + N(0, 0.1) norm weights."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        noise = rng.normal(size=var.shape)
        value = 1 + 0.1 * noise if path[-1] == "weight" else scale * noise
        var[...] = value.astype(var[...].dtype)
    nnx.update(model, state)
