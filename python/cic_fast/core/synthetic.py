"""DNN-shaped layer graphs with realistic per-layer costs, for tests and benchmarks.

The graphs imitate what tracing a torchvision-style model yields: one node per
operator (conv, batch norm, activation, add, concat, matmul, view, ...), edges
following the data flow, node ids in topological order. Costs come from a crude
FLOP / memory-traffic estimate of each operator on a mobile-class CPU, so that the
trade-offs a partitioner sees (big early activations, cheap element-wise layers,
zero-cost views, many-edge concatenations) look like the real ones.

Only numpy is needed, so the generator can be used without the compiled core.

Examples
--------
>>> from cic_fast.core.synthetic import dnn_graph
>>> g = dnn_graph(300, kind="resnet", seed=1)
>>> g.edges.shape[1], len(g.device_s)
(2, 300)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["KINDS", "DnnGraph", "dnn_graph"]

KINDS: tuple[str, ...] = ("chain", "resnet", "inception", "densenet", "transformer", "mixed")

# A float32 3x224x224 image, the input of every generated model.
_INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)
_BYTES_PER_ELEMENT = 4

# Mobile-class CPU figures: ~20 GFLOP/s sustained on convolutions and ~4 GB/s of
# memory traffic for element-wise layers, plus a per-operator dispatch overhead.
# Only the orders of magnitude matter; the contract asks for 1e-5..1e-2 s per layer.
_DEVICE_FLOPS = 2.0e10
_DEVICE_MEM_BPS = 4.0e9
_DEVICE_OVERHEAD_S = 5.0e-6
_MIN_LAYER_S = 1.0e-5
_MAX_LAYER_S = 1.0e-2

# Below this many layers the block structures do not fit; any kind becomes a chain.
_MIN_STRUCTURED = 64

Shape = tuple[int, int, int]  # (channels, height, width); tokens are H*W, features C


class DnnGraph(NamedTuple):
    """A layer graph with per-layer costs, in the form ``cic_fast.min_cut`` takes.

    Attributes
    ----------
    name : str
        ``"<kind>-<n>-s<seed>"``.
    edges : numpy.ndarray
        ``(E, 2)`` int64 array of ``(u, v)`` data-flow edges, ``u < v``.
    device_s : numpy.ndarray
        float64 seconds per layer on the device.
    server_s : numpy.ndarray
        float64 seconds per layer on the server (``device_s / server_speedup``).
    out_bytes : numpy.ndarray
        float64 bytes of each layer's output (float32 activations).
    """

    name: str
    edges: np.ndarray
    device_s: np.ndarray
    server_s: np.ndarray
    out_bytes: np.ndarray


def _numel(shape: Shape) -> int:
    return shape[0] * shape[1] * shape[2]


class _Builder:
    """Appends operator nodes; each node records its cost and output shape."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.device: list[float] = []
        self.nbytes: list[float] = []
        self.shapes: list[Shape] = []
        self.edges: list[tuple[int, int]] = []

    @property
    def n(self) -> int:
        return len(self.device)

    def mark(self) -> tuple[int, int]:
        return self.n, len(self.edges)

    def rollback(self, mark: tuple[int, int]) -> None:
        n, e = mark
        del self.device[n:], self.nbytes[n:], self.shapes[n:], self.edges[e:]

    def node(self, preds: Sequence[int], shape: Shape, flops: float, moved_bytes: float) -> int:
        """Add an operator with a compute-bound or memory-bound time, whichever is larger."""
        t = max(flops / _DEVICE_FLOPS, moved_bytes / _DEVICE_MEM_BPS) + _DEVICE_OVERHEAD_S
        # Per-layer noise: real profiles are never a clean function of FLOPs.
        t *= float(self.rng.lognormal(0.0, 0.15))
        return self._append(preds, shape, min(max(t, _MIN_LAYER_S), _MAX_LAYER_S))

    def input(self, shape: Shape) -> int:
        # A placeholder costs nothing; its data already lives on the device.
        return self._append((), shape, 0.0)

    def view(self, x: int, shape: Shape | None = None) -> int:
        """A zero-cost pass-through (flatten, view, transpose, eval dropout)."""
        return self._append((x,), self.shapes[x] if shape is None else shape, 0.0)

    def _append(self, preds: Sequence[int], shape: Shape, t: float) -> int:
        v = self.n
        self.device.append(t)
        self.nbytes.append(float(_numel(shape) * _BYTES_PER_ELEMENT))
        self.shapes.append(shape)
        self.edges.extend((u, v) for u in preds)
        return v

    # --- operators -------------------------------------------------------------

    def conv(self, x: int, c_out: int, k: int = 3, stride: int = 1) -> int:
        c, h, w = self.shapes[x]
        shape = (c_out, max(1, h // stride), max(1, w // stride))
        flops = 2.0 * c * c_out * k * k * shape[1] * shape[2]
        moved = 4.0 * (_numel(self.shapes[x]) + _numel(shape) + c * c_out * k * k)
        return self.node((x,), shape, flops, moved)

    def eltwise(self, xs: Sequence[int], shape: Shape | None = None) -> int:
        """Batch norm, activation, add, multiply: memory bound."""
        out = self.shapes[xs[0]] if shape is None else shape
        moved = 4.0 * (sum(_numel(self.shapes[u]) for u in xs) + _numel(out))
        return self.node(xs, out, float(_numel(out)), moved)

    def bn_relu(self, x: int) -> int:
        return self.eltwise((self.eltwise((x,)),))

    def conv_bn_relu(self, x: int, c_out: int, k: int = 3, stride: int = 1) -> int:
        return self.bn_relu(self.conv(x, c_out, k, stride))

    def pool(self, x: int, stride: int = 2) -> int:
        c, h, w = self.shapes[x]
        return self.eltwise((x,), (c, max(1, h // stride), max(1, w // stride)))

    def global_pool(self, x: int) -> int:
        return self.eltwise((x,), (self.shapes[x][0], 1, 1))

    def cat(self, xs: Sequence[int]) -> int:
        c = sum(self.shapes[u][0] for u in xs)
        _, h, w = self.shapes[xs[0]]
        return self.eltwise(xs, (c, h, w))

    def upsample(self, x: int, shape_like: int) -> int:
        _, h, w = self.shapes[shape_like]
        return self.eltwise((x,), (self.shapes[x][0], h, w))

    def linear(self, x: int, d_out: int) -> int:
        """Token-wise linear layer: tokens = H*W, features = C."""
        c, h, w = self.shapes[x]
        shape = (d_out, h, w)
        flops = 2.0 * h * w * c * d_out
        moved = 4.0 * (_numel(self.shapes[x]) + _numel(shape) + c * d_out)
        return self.node((x,), shape, flops, moved)

    def maybe_passthrough(self, x: int, p: float = 0.06) -> int:
        # Traced models are sprinkled with views, contiguous() and eval-mode dropout.
        return self.view(x) if self.rng.random() < p else x


# --- blocks ----------------------------------------------------------------------


def _residual(b: _Builder, x: int, c_out: int, stride: int, bottleneck: bool) -> int:
    """ResNet basic/bottleneck block; a projection shortcut where the shape changes."""
    c_in = b.shapes[x][0]
    if bottleneck:
        mid = max(16, c_out // 4)
        y = b.conv_bn_relu(x, mid, 1)
        y = b.conv_bn_relu(y, mid, 3, stride)
        y = b.eltwise((b.conv(y, c_out, 1),))
    else:
        y = b.conv_bn_relu(x, c_out, 3, stride)
        y = b.eltwise((b.conv(y, c_out, 3),))
    shortcut = x
    if stride != 1 or c_in != c_out:
        shortcut = b.eltwise((b.conv(x, c_out, 1, stride),))
    out = b.eltwise((y, shortcut))
    return b.maybe_passthrough(b.eltwise((out,)))


def _inception(b: _Builder, x: int, c_out: int, stride: int) -> int:
    """GoogLeNet-style block: 3 or 4 parallel branches joined by a concat."""
    if stride != 1:
        x = b.pool(x, stride)  # the reduction max-pool between inception stages
    q = max(8, c_out // 4)
    branches: list[Callable[[], int]] = [
        lambda: b.conv_bn_relu(x, q, 1),
        lambda: b.conv_bn_relu(b.conv_bn_relu(x, q // 2, 1), q, 3),
        lambda: b.conv_bn_relu(b.conv_bn_relu(b.conv_bn_relu(x, q // 4, 1), q // 2, 3), q, 3),
        lambda: b.conv_bn_relu(b.pool(x, 1), q, 1),
    ]
    if b.rng.random() < 0.3:
        del branches[int(b.rng.integers(0, 4))]
    outs = [make() for make in branches]
    return b.maybe_passthrough(b.cat(outs))


def _dense_block(b: _Builder, x: int, n_layers: int, growth: int = 32) -> int:
    """DenseNet block: every layer reads the concat of the block input and all earlier layers."""
    features = [x]
    for _ in range(n_layers):
        y = b.bn_relu(b.cat(features))
        y = b.conv_bn_relu(y, 4 * growth, 1)
        features.append(b.conv(y, growth, 3))
    return b.cat(features)


def _dense_transition(b: _Builder, x: int) -> int:
    y = b.conv(b.bn_relu(x), max(16, b.shapes[x][0] // 2), 1)
    return b.pool(y, 2)


def _transformer(b: _Builder, x: int, d_out: int, stride: int) -> int:
    """Windowed (Swin-like) pre-norm transformer block; patch merging where it downsamples."""
    if stride != 1:
        c, h, w = b.shapes[x]
        merged = b.view(x, (4 * c, max(1, h // 2), max(1, w // 2)))
        x = b.linear(b.eltwise((merged,)), d_out)
    d, h, w = b.shapes[x]
    tokens = h * w
    window = min(tokens, 49)
    heads = max(1, d // 32)
    ln = b.eltwise((x,))
    q, k, v = b.linear(ln, d), b.linear(ln, d), b.linear(ln, d)
    k_t = b.view(k)  # transpose: a view, free
    score_shape: Shape = (heads * window, h, w)
    scores = b.node(
        (q, k_t),
        score_shape,
        2.0 * tokens * window * d,
        4.0 * (2 * _numel(b.shapes[q]) + _numel(score_shape)),
    )
    attn = b.eltwise((scores,))  # softmax
    ctx = b.node(
        (attn, v),
        (d, h, w),
        2.0 * tokens * window * d,
        4.0 * (_numel(score_shape) + 2 * _numel(b.shapes[v])),
    )
    ctx = b.view(ctx)  # merge heads
    x = b.eltwise((x, b.linear(ctx, d)))
    y = b.linear(b.eltwise((x,)), 4 * d)
    y = b.linear(b.maybe_passthrough(b.eltwise((y,))), d)
    return b.eltwise((x, y))


# --- whole models ------------------------------------------------------------------


_STAGES: tuple[tuple[int, int], ...] = ((256, 1), (512, 2), (1024, 2), (2048, 2))
_SWIN_STAGES: tuple[tuple[int, int], ...] = ((96, 1), (192, 2), (384, 2), (768, 2))


class _Joins:
    """Extra model inputs: each is embedded and added into the trunk at some depth."""

    def __init__(self, b: _Builder, n_extra: int, body_start: int, body_end: int) -> None:
        self.pending: list[tuple[int, int]] = []
        for i in range(n_extra):
            side = b.input((256, 1, 1))  # e.g. a metadata vector or text embedding
            emb = b.eltwise((b.linear(side, 256),))
            at = body_start + (i + 1) * (body_end - body_start) // (n_extra + 2)
            self.pending.append((at, emb))

    @staticmethod
    def nodes_per_input() -> int:
        return 4  # input, linear, activation, and the broadcast add into the trunk

    def maybe_join(self, b: _Builder, x: int) -> int:
        while self.pending and b.n >= self.pending[0][0]:
            _, emb = self.pending.pop(0)
            x = b.eltwise((x, emb))  # FiLM-like broadcast conditioning
        return x


def _stem(b: _Builder, x: int, kind: str) -> int:
    if kind == "transformer":
        y = b.conv(x, 96, 4, 4)  # patch embedding
        return b.eltwise((b.view(y),))  # flatten to tokens, layer norm
    return b.pool(b.conv_bn_relu(x, 64, 7, 2), 2)


def _head(b: _Builder, x: int) -> int:
    y = b.view(b.global_pool(b.eltwise((x,))))  # norm, pool, flatten
    return b.linear(y, 1000)


_HEAD_NODES = 4


def _chain_model(b: _Builder, x: int, body_end: int, joins: _Joins) -> int:
    """VGG-like: conv/bn/relu repeated, pooling between stages."""
    start = b.n
    widths = (64, 128, 256, 512, 512)
    stage = 0
    while b.n < body_end:
        x = joins.maybe_join(b, x)
        if b.n >= body_end:
            break
        s = min(len(widths) - 1, (len(widths) * (b.n - start)) // max(1, body_end - start))
        if s > stage:
            stage = s
            x = b.pool(x, 2)
            continue
        step = (b.n - start) % 3
        if step == 0:
            x = b.conv(x, widths[stage], 3)
        else:
            x = (
                b.maybe_passthrough(b.eltwise((x,)), 0.03)
                if b.n + 1 < body_end
                else b.eltwise((x,))
            )
    return x


def _block_model(b: _Builder, x: int, body_end: int, kind: str, joins: _Joins) -> int:
    """Stages of blocks; the resolution halves as the node budget is used up."""
    start = b.n
    stages = _SWIN_STAGES if kind == "transformer" else _STAGES
    stage = -1
    bottleneck = bool(b.rng.random() < 0.7)
    while True:
        x = joins.maybe_join(b, x)
        s = min(len(stages) - 1, (len(stages) * (b.n - start)) // max(1, body_end - start))
        # A new stage halves the resolution (the first stage's own stride is 1).
        c_out, stride = stages[s] if s > stage else (stages[s][0], 1)
        m = b.mark()
        if kind == "resnet":
            y = _residual(b, x, c_out, stride, bottleneck)
        elif kind == "inception":
            y = _inception(b, x, c_out // 2, stride)
        else:
            y = _transformer(b, x, c_out, stride)
        if b.n > body_end:
            b.rollback(m)
            break
        x, stage = y, max(stage, s)
    return _pad(b, x, body_end, joins)


def _densenet_model(b: _Builder, x: int, body_end: int, joins: _Joins) -> int:
    """DenseNet-201 proportions (6, 12, 48, 32 layers) scaled to the node budget."""
    budget = body_end - b.n
    per_layer = 7  # cat, bn, relu, conv1x1, bn, relu, conv3x3
    fixed = 4 + 3 * 4 + len(joins.pending)  # block-closing concats, transitions, joins
    n_dense = max(4, (budget - fixed) // per_layer)
    weights = np.array([6, 12, 48, 32], dtype=np.float64)
    exact = weights / weights.sum() * n_dense
    counts = np.maximum(1, np.floor(exact).astype(np.int64))
    # Largest remainder, so the counts add up to n_dense and the total size is predictable.
    for i in np.argsort(-(exact - np.floor(exact)))[: max(0, n_dense - int(counts.sum()))]:
        counts[i] += 1
    for i, count in enumerate(counts):
        x = joins.maybe_join(b, x)
        x = _dense_block(b, x, int(count))
        if i < len(counts) - 1:
            x = _dense_transition(b, x)
    return _pad(b, x, body_end, joins)


def _mixed_model(b: _Builder, x: int, body_end: int, joins: _Joins) -> int:
    """Every block type, then a U-Net-like decoder whose concats take long skips."""
    start = b.n
    decoder_budget = max(12, (body_end - start) // 6)
    enc_end = body_end - decoder_budget
    skips: list[int] = []
    stage = 0
    # A 1x1 conv reaches the first stage width, so the blocks below start from it.
    x = b.conv(x, _STAGES[0][0], 1)
    while True:
        x = joins.maybe_join(b, x)
        s = min(len(_STAGES) - 1, (len(_STAGES) * (b.n - start)) // max(1, enc_end - start))
        stride = 2 if s > stage else 1
        if stride == 2:
            skips.append(x)
        c_out = _STAGES[s][0]
        m = b.mark()
        choice = int(b.rng.integers(0, 4))
        if choice == 0:
            y = _residual(b, x, c_out, stride, bool(b.rng.random() < 0.5))
        elif choice == 1:
            y = _inception(b, x, c_out // 2, stride)
        elif choice == 2:
            y = _dense_transition(b, x) if stride == 2 else x
            y = _dense_block(b, y, int(b.rng.integers(3, 7)))
            y = b.conv(y, c_out, 1)  # back to the stage width
        else:
            y = b.view(b.conv(x, c_out // 4, 1))  # narrow, then to tokens
            y = _transformer(b, y, c_out // 4, stride)
            y = b.conv(b.view(y), c_out, 1)
        if b.n > enc_end:
            b.rollback(m)
            if stride == 2:
                skips.pop()
            break
        x, stage = y, s
    x = _pad(b, x, enc_end, joins)
    # Decoder: upsample, concat with the encoder map of the same resolution, fuse.
    for skip in reversed(skips[-2:]):
        if b.n + 7 > body_end:
            break
        up = b.upsample(b.conv(x, b.shapes[skip][0] // 2, 1), skip)
        x = b.conv_bn_relu(b.cat((up, skip)), b.shapes[skip][0] // 2, 3)
        x = b.pool(x, 2)  # keep the head small: activations still shrink overall
    return _pad(b, x, body_end, joins)


def _pad(b: _Builder, x: int, end: int, joins: _Joins) -> int:
    """Fill the remaining node budget with conv/bn/relu layers (exact node count)."""
    while b.n < end:
        x = joins.maybe_join(b, x)
        if b.n < end:
            x = b.conv(x, b.shapes[x][0], 1) if (end - b.n) % 3 == 0 else b.eltwise((x,))
    return x


def dnn_graph(
    n_layers: int,
    *,
    kind: str = "mixed",
    seed: int = 0,
    device_slowdown: float = 1.0,
    server_speedup: float = 10.0,
    n_inputs: int = 1,
) -> DnnGraph:
    """Generate a DNN-shaped layer graph with realistic per-layer costs.

    Parameters
    ----------
    n_layers : int
        Number of nodes wanted; the result has exactly this many when
        ``n_layers >= 64`` (smaller requests, and very small ones for the
        extra inputs, become chains of that many nodes).
    kind : str
        ``"chain"`` (VGG-like), ``"resnet"`` (basic/bottleneck residual blocks with
        projection shortcuts), ``"inception"`` (3-4 branch blocks joined by concat),
        ``"densenet"`` (every layer of a block reads the concat of all earlier ones),
        ``"transformer"`` (windowed attention: q/k/v, softmax, residual adds) or
        ``"mixed"`` (all block types plus U-Net-like long skips).
    seed : int
        Seed of the structure and cost noise; equal arguments give equal graphs.
    device_slowdown : float
        Multiplies every device time (a slower edge device).
    server_speedup : float
        ``server_s = device_s / server_speedup``.
    n_inputs : int
        Number of source nodes. Node 0 is the image; extra inputs (nodes ``1..``)
        are small vectors embedded and added into the trunk at some depth.

    Returns
    -------
    DnnGraph
        Edges ``(E, 2)`` int64 with ``u < v``; costs as float64 arrays.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``n_layers < 1``, ``n_inputs < 1`` or a speed
        factor is not positive.

    Examples
    --------
    >>> g = dnn_graph(700, kind="densenet")
    >>> len(g.device_s), 2300 < len(g.edges) < 2700
    (700, True)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if n_inputs < 1:
        raise ValueError(f"n_inputs must be >= 1, got {n_inputs}")
    if not (device_slowdown > 0 and server_speedup > 0):
        raise ValueError("device_slowdown and server_speedup must be positive")

    rng = np.random.default_rng([seed, n_layers, KINDS.index(kind), n_inputs])
    b = _Builder(rng)
    x = b.input(_INPUT_SHAPE)
    n_extra = n_inputs - 1
    structured = n_layers >= _MIN_STRUCTURED + _Joins.nodes_per_input() * n_extra
    if not structured:
        n_extra = 0  # too small to hold the side branches; one input only
    body_start = 1 + 3 * n_extra + (4 if structured else 0)
    body_end = n_layers - (_HEAD_NODES if structured else 0)
    # Join points lie inside the body, which every model fills join-aware up to body_end,
    # so the extra inputs' adds are part of the body budget and the count stays exact.
    joins = _Joins(b, n_extra, body_start, body_end)

    if not structured:
        x = _chain_model(b, x, n_layers, joins)
    else:
        x = _stem(b, x, kind)
        if kind == "chain":
            x = _chain_model(b, x, body_end, joins)
        elif kind == "densenet":
            x = _densenet_model(b, x, body_end, joins)
        elif kind == "mixed":
            x = _mixed_model(b, x, body_end, joins)
        else:
            x = _block_model(b, x, body_end, kind, joins)
        _head(b, x)

    device = np.asarray(b.device, dtype=np.float64) * device_slowdown
    edges = np.asarray(b.edges, dtype=np.int64).reshape(-1, 2)
    return DnnGraph(
        name=f"{kind}-{n_layers}-s{seed}",
        edges=edges,
        device_s=device,
        server_s=device / server_speedup,
        out_bytes=np.asarray(b.nbytes, dtype=np.float64),
    )
