"""A model's graph as a static argument of jitted functions, cheap to pass on every call.

The inference loops (`ingest`, `forward_long`, the evals) call a jitted step once per window with the model split
into its graph (static) and its parameters. Under `jax.jit` a static argument is hashed on every call, and hashing
an NNX `GraphDef` walks the whole module tree (about 3 ms for a 4-layer model here, more than the small model's
whole window step). `StaticGraph` hashes it once; calls with the same object then hit jit's cache on identity.
"""

from __future__ import annotations

from flax import nnx


class StaticGraph:
    """An `nnx.GraphDef` with its hash computed once (equal graphs still compare equal, so compiled steps are
    shared across `split_static` calls)."""

    __slots__ = ("_hash", "graphdef")

    def __init__(self, graphdef: nnx.GraphDef) -> None:
        self.graphdef = graphdef
        self._hash = hash(graphdef)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, StaticGraph) and self._hash == other._hash and self.graphdef == other.graphdef

    def __repr__(self) -> str:
        return f"StaticGraph({self._hash:#x})"


def split_static(model: nnx.Module) -> tuple[StaticGraph, nnx.State]:
    """`nnx.split(model)` with the graph wrapped for jit (pass it as a static argument)."""
    graphdef, state = nnx.split(model)
    return StaticGraph(graphdef), state


def merge(graph: StaticGraph, state: nnx.State) -> nnx.Module:
    """The model back from `split_static`'s two halves (inside or outside jit)."""
    return nnx.merge(graph.graphdef, state)
