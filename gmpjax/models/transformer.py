"""A small decoder-only transformer whose ReLU MLP blocks can be SP, WN or GmP (with optional IMN).

Pre-LayerNorm blocks (Radford et al. 2019 ordering)::

    h = x + Attention(LayerNorm(x))                  causal multi-head self-attention
    y = h + Down(Up(LayerNorm(h)))                   Up: d -> mlp_ratio * d with ReLU, Down: linear back to d

``Up`` is built by ``gmpjax.layers.registry.make_dense(parameterization, ...)``:
``sp`` a standard ReLU layer, ``wn`` weight norm, ``gmp`` the GmP unit
``r * relu(u(theta) . x + lambda)``, ``gmp_imn`` GmP after input mean
normalization of its input. ``Down`` is a standard ``nnx.Linear`` (as GmP networks
keep standard output layers). Everything else (embeddings, attention, norms,
head) is standard nnx.

Mixed precision: every layer gets ``dtype`` (compute, e.g. ``jnp.bfloat16``) and
``param_dtype`` (storage, float32); the attention softmax and the logits are
computed in float32.

Tensor parallelism (``model_axis="model"``): the Megatron pattern in both
sub-blocks -- query/key/value projections and ``Up`` column parallel (heads and
hidden units split over the mesh axis; for GmP: theta, radius and offset on their
output axis), the attention output projection and ``Down`` row parallel. The
number of heads and the hidden width must be divisible by the axis size.

IMN in a language model: in training IMN subtracts the mean over the batch *and*
the sequence of its input, so one mean vector per step mixes positions (the same
as batch norm would); evaluation uses the running mean and is strictly causal.

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> make = lambda: TransformerLM(256, 16, parameterization="gmp", d_model=32, num_heads=2, num_layers=1,
...                              rngs=nnx.Rngs(0))
>>> lm = nnx.eval_shape(make)  # shapes only: nothing is computed
>>> out = nnx.eval_shape(lambda m, t: m(t), lm, jax.ShapeDtypeStruct((2, 16), jnp.int32))
>>> out.shape, out.dtype
((2, 16, 256), dtype('float32'))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax.layers import registry
from gmpjax.layers.parallel import STANDARD_ROLES, column_metadata, column_parallel, row_parallel

__all__ = ["TransformerLM", "Block", "CausalSelfAttention", "MLPBlock", "MLP_PARAMETERIZATIONS"]

MLP_PARAMETERIZATIONS: tuple[str, ...] = tuple(
    n for n in registry.PARAMETERIZATIONS if not registry.get(n).batch_statistics
)
"""The built-in parameterizations of the MLP's ReLU layer: those without batch statistics of their own
pre-activations (BN, MBN would mix positions). A registered row qualifies by the same trait."""


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int (got {v!r}).")
    return v


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention, ``(B, T, d) -> (B, T, d)``; softmax in float32."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        model_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}.")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        col: dict[str, Any] = {} if model_axis is None else column_metadata(STANDARD_ROLES, axis=model_axis)
        row: dict[str, Any] = {} if model_axis is None else row_parallel(axis=model_axis)
        kw: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = nnx.Linear(d_model, d_model, **kw, **col)
        self.key = nnx.Linear(d_model, d_model, **kw, **col)
        self.value = nnx.Linear(d_model, d_model, **kw, **col)
        self.out = nnx.Linear(d_model, d_model, **kw, **row)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        heads = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(self.head_dim)
        causal = jnp.tril(jnp.ones((t, t), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1).astype(v.dtype)
        return self.out(jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, -1))


class MLPBlock(nnx.Module):
    """``Down(Up(x))`` with ``Up = make_dense(parameterization, d, hidden, activation=relu)``, ``Down`` linear."""

    def __init__(
        self,
        d_model: int,
        hidden: int,
        parameterization: str,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        model_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        p = registry.get(parameterization)
        if p.batch_statistics:
            ok = [n for n in registry.names() if not registry.get(n).batch_statistics]
            raise ValueError(
                f"parameterization {parameterization!r} is not available for the transformer MLP (its batch "
                f"statistics would mix positions); choose one of {', '.join(ok)}."
            )
        col: dict[str, Any] = {} if model_axis is None else column_parallel(p.name, axis=model_axis)
        row: dict[str, Any] = {} if model_axis is None else row_parallel(axis=model_axis)
        self.up = p.build_dense(
            d_model, hidden, activation=nnx.relu, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **col
        )
        self.down = nnx.Linear(hidden, d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **row)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.up(x))


class Block(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        hidden: int,
        parameterization: str,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        model_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        kw: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln1 = nnx.LayerNorm(d_model, **kw)
        self.attn = CausalSelfAttention(d_model, num_heads, model_axis=model_axis, **kw)
        self.ln2 = nnx.LayerNorm(d_model, **kw)
        self.mlp = MLPBlock(d_model, hidden, parameterization, model_axis=model_axis, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nnx.Module):
    """Decoder-only language model: tokens ``(B, T)`` int -> next-token logits ``(B, T, vocab_size)`` float32.

    Args:
      vocab_size: number of symbols (256 for bytes).
      max_len: longest sequence (size of the learned position embedding).
      parameterization: the MLP's ReLU layer, one of ``MLP_PARAMETERIZATIONS``.
      d_model, num_heads, num_layers: width, heads per attention, blocks.
      mlp_ratio: MLP hidden width ``mlp_ratio * d_model``.
      dtype: compute dtype (``jnp.bfloat16`` for bf16 training); None: the param dtype.
      param_dtype: parameter dtype.
      model_axis: mesh axis name for tensor-parallel annotations (None: no annotations).
      rngs: random streams.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        parameterization: str,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        mlp_ratio: int = 4,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        model_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, v in (
            ("vocab_size", vocab_size),
            ("max_len", max_len),
            ("d_model", d_model),
            ("num_heads", num_heads),
            ("num_layers", num_layers),
            ("mlp_ratio", mlp_ratio),
        ):
            _positive(name, v)
        self.max_len = max_len
        kw: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed = nnx.Embed(vocab_size, d_model, **kw)
        self.pos = nnx.Embed(max_len, d_model, **kw)
        self.blocks = nnx.List(
            [
                Block(d_model, num_heads, mlp_ratio * d_model, parameterization, model_axis=model_axis, **kw)
                for _ in range(num_layers)
            ]
        )
        self.ln_f = nnx.LayerNorm(d_model, **kw)
        self.head = nnx.Linear(d_model, vocab_size, **kw)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"TransformerLM expects integer tokens of shape (batch, time), got {tokens.dtype} {tokens.shape}."
            )
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={self.max_len}.")
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[1]))[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)).astype(jnp.float32)
