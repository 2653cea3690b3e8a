"""Zoo coverage of the PyTorch front end: trace and split timm and Hugging Face models.

Run ``python benches/zoo_coverage.py [--timm-sample N | --timm-all] [--hf]
[--families F ...] [--models M ...] [--timeout S] [--jobs J] [--json OUT] [--markdown]``
(``--from-json A.json [B.json ...] --markdown`` re-renders saved results).

For each model (random weights: timm ``pretrained=False``, Hugging Face models built
from tiny configs; nothing is downloaded, ``HF_HUB_OFFLINE=1``):

1. build it and small example inputs (timm: 64x64 where the model runs at it, with
   ``img_size=64`` where its constructor takes that, else the ``pretrained_cfg``
   input size);
2. ``g = cic_fast.trace(model, inputs)`` (``g.method``: ``fx`` or ``export``);
3. split at all-device, all-server, three prefixes ``np.arange(n) < k``, three random
   down-closed masks and the min-cut at 1, 10 and 100 Mbit/s with FLOP-based profiles
   (as tests/test_split.py's ``flop_profiles``), and check each: ``tail(head(x))``
   equals ``model(x)`` (structure, types, dtypes, values to 1e-4), the bytes of the
   head's tensors equal ``partition.bytes_sent``, the head's keys are
   ``partition.sent``, and the head's dict goes through the runtime's wire encoder
   the way the runtime sends it (``head.codec.flatten``, an INFER frame encoded and
   decoded by `cic_fast.runtime.messages`, the server's checks of each tensor against
   ``tail.codec.leaves``, ``tail.codec.restore``), and the tail gives the model's
   outputs from the decoded dict.

Result classes, per model:

- ``correct``: every partition passes every check;
- ``wire``: values and bytes are right in process, but for some partition the
  runtime's path refuses the head's dict: the head's `BoundaryCodec` cannot flatten
  it ("non-tensor crosses cut": a value unlike the trace's), the encoder has no wire
  code for a dtype, or the tensors do not match what the server's tail expects (it
  would answer BAD_TENSOR); the client then runs that request locally;
- ``wrong``: a partition gives other values, dtypes, structure, keys or bytes (the
  dangerous kind);
- ``refused``: ``trace`` raised `TraceError` (its message is recorded);
- ``error``: any other exception in trace, split, head or tail (type, first line,
  innermost frame and innermost cic_fast frame recorded), or the per-model timeout
  ran out after the model was built;
- ``skipped``: not a front-end question: the model has more than ``--max-params``
  parameters (counted on the meta device), building took more than
  ``--build-limit`` seconds or the whole timeout, the worker died (out of memory),
  the model itself fails on every input size tried, or its forward is not
  deterministic.

Each model runs in a worker process (``--jobs`` of them, one torch thread each) with a
wall-clock ``--timeout``: a hung or crashed model is killed and recorded, and the
run goes on. Results are written to ``--json`` after every model, so an interrupted
run keeps what it did; ``--resume`` skips the models already there.

The timm sample (``--timm-sample N``) groups ``timm.list_models()`` by family (the
module ``timm.models.<family>`` that registers the architecture) and takes models
round-robin over the families, smallest parameter count first, until N: every
family is covered from N >= 98 (timm 1.0.31). Parameter counts are taken on the
meta device once and cached (``~/.cache/cic_fast/timm-params-<version>.json``).

Not part of the test run: minutes to hours. tests/test_zoo_subset.py runs the same
check on a few models.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BANDWIDTHS_MBIT = (1.0, 10.0, 100.0)
RTOL = ATOL = 1e-4
SMALL_SIZE = 64
CLASSES = ("correct", "wire", "wrong", "refused", "error", "skipped")


class Skip(Exception):
    """The model is out of scope (too large, too slow to build, fails by itself)."""


# ---------------------------------------------------------------- the check


def flop_profiles(g: Any, speedup: float = 10.0) -> tuple[Any, Any]:
    """Device/server profiles from FLOP counts: a ~2 GFLOP/s device, a faster server."""
    from cic_fast.frontend.profiling import Profile

    dev = 1e-5 + g.flops / 2e9
    dev[g.inputs] = 0.0
    dev[g.output] = 0.0
    p = Profile.from_times(g, dev)
    return p, p.scaled(1.0 / speedup)


def prefix(g: Any, k: int) -> Any:
    """The first k nodes on the device (nodes are topologically ordered)."""
    import numpy as np

    return np.arange(g.n_nodes) < max(k, int(g.inputs.max()) + 1)


def down_closed(g: Any, rng: Any) -> Any:
    """A few random nodes and all their descendants on the server."""
    import numpy as np

    succ = g.successors()
    on = np.ones(g.n_nodes, dtype=bool)
    inputs = set(g.inputs.tolist())
    seeds = rng.choice(g.n_nodes, size=min(3, g.n_nodes), replace=False).tolist()
    stack = [s for s in seeds if s not in inputs]
    while stack:
        v = stack.pop()
        if on[v]:
            on[v] = False
            stack.extend(succ[v])
    return on


def describe(value: Any) -> str:
    """A short description of a value: ``f32[1,3]``, ``int``, ``tuple(f32[2],int)``."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}[{','.join(map(str, value.shape))}]"
    if isinstance(value, tuple | list):
        inner = ",".join(describe(v) for v in value[:4]) + (",..." if len(value) > 4 else "")
        return f"{type(value).__name__}({inner})"
    if isinstance(value, dict):
        return f"{type(value).__name__}({','.join(map(str, list(value)[:4]))})"
    return type(value).__name__


def compare(got: Any, want: Any) -> str | None:
    """Why ``got`` differs from ``want`` (structure, types, dtypes, values), or None."""
    import torch
    from torch.utils import _pytree

    if type(got) is not type(want):
        return f"output is {type(got).__name__}, the model gives {type(want).__name__}"
    gl, gs = _pytree.tree_flatten(got)
    wl, ws = _pytree.tree_flatten(want)
    if gs != ws:
        return f"output structure {gs}, the model gives {ws}"[:400]
    for i, (a, b) in enumerate(zip(gl, wl, strict=True)):
        if type(a) is not type(b):
            return f"output leaf {i} is {describe(a)}, the model gives {describe(b)}"
        if isinstance(a, torch.Tensor):
            if a.dtype != b.dtype or a.shape != b.shape:
                return f"output leaf {i} is {describe(a)}, the model gives {describe(b)}"
            try:
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)
            except AssertionError as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                return f"output leaf {i} {describe(a)}: " + "; ".join(lines[:3])
        else:
            try:
                same = bool(a == b)
            except Exception:
                same = False
            if not same:
                return f"output leaf {i} is {a!r}, the model gives {b!r}"[:300]
    return None


def _frame(tb: Any, where: str | None = None) -> str | None:
    frames = traceback.extract_tb(tb)
    if where is not None:
        frames = [f for f in frames if where in f.filename]
    if not frames:
        return None
    f = frames[-1]
    path = f.filename
    for marker in ("site-packages/", "python/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{f.lineno} in {f.name}"


def error_record(e: BaseException) -> dict[str, Any]:
    """Type, first line, innermost frame and innermost cic_fast frame of an exception."""
    text = str(e).strip()
    return {
        "type": type(e).__name__,
        "message": (text.splitlines()[0] if text else "")[:500],
        "frame": _frame(e.__traceback__),
        "cic_frame": _frame(e.__traceback__, "cic_fast"),
    }


def wire_problem(sent: dict[str, Any]) -> str | None:
    """Which values of the head's dict the wire cannot carry, or None."""
    import torch

    from cic_fast.runtime import wire

    bad = []
    for name, v in sent.items():
        if not isinstance(v, torch.Tensor):
            bad.append(f"{name}: {describe(v)}")
        elif str(v.dtype).removeprefix("torch.") not in wire._DTYPE_CODE:
            bad.append(f"{name}: dtype {v.dtype}")
    return ", ".join(bad) if bad else None


def check_partition(
    s: Any, inputs: tuple[Any, ...], ref: Any, stage: list[str] | None = None
) -> tuple[str, str | None]:
    """Check one split; returns (status, detail), status in ok/wire/wrong.

    ``stage[0]`` is kept at the step running (head, encode, tail, decode, tail after
    the wire), so that an exception can be placed.
    """
    stage = stage if stage is not None else [""]
    import numpy as np
    import torch

    from cic_fast.runtime import messages, wire

    p = s.partition
    g = s.graph
    with torch.no_grad():
        stage[0] = "head"
        sent = s.head(*inputs)
        if not isinstance(sent, dict):
            return "wrong", f"head returned {type(sent).__name__}, not a dict"
        got_bytes = sum(
            t.numel() * t.element_size()
            for v in sent.values()
            for t in torch.utils._pytree.tree_leaves(v)
            if isinstance(t, torch.Tensor)
        )
        if p.offloads:
            names = [g.names[i] for i in np.asarray(p.sent).tolist()]
            if list(sent) != names:
                return "wrong", f"head keys {list(sent)[:5]} are not partition.sent {names[:5]}"
            if got_bytes != p.bytes_sent:
                return "wrong", f"head returns {got_bytes} bytes, bytes_sent {p.bytes_sent}"
        elif p.bytes_sent != 0:
            return "wrong", f"nothing offloaded but bytes_sent {p.bytes_sent}"
        # Through the runtime's path (Client._run, Server.run_tail): the head's codec
        # flattens the dict into named tensors, the INFER frame carries them, the server
        # checks each against the tail's codec and restores the dict. Encoded before
        # the tail runs (a tail may write into the dict's tensors).
        encoded = None
        problem = None
        head_codec = getattr(s.head, "codec", None)
        tail_codec = getattr(s.tail, "codec", None)
        if p.offloads:
            stage[0] = "encode"
            try:
                items = head_codec.flatten(sent) if head_codec is not None else sent.items()
                parts, _ = messages.encode_request(1, p.on_device, dict(items))
                encoded = b"".join(bytes(memoryview(x).cast("B")) for x in parts)
            except (TypeError, ValueError) as e:
                problem = f"{type(e).__name__}: {e}"
                if head_codec is None:
                    problem = wire_problem(sent) or problem
        stage[0] = "tail"
        out = s.tail(sent)
        why = compare(out, ref)
        if why is not None:
            return "wrong", why
        if encoded is not None:
            limits = wire.Limits(
                max_frame_bytes=1 << 40, max_tensor_bytes=1 << 40, max_tensors=1 << 20
            )
            stage[0] = "decode"
            _, on, decoded = messages.decode_request(encoded, limits)
            if not np.array_equal(on, np.asarray(p.on_device, dtype=bool)):
                return "wrong", "the partition mask does not survive the wire"
            if tail_codec is not None:
                want = {leaf.name: (leaf.dtype, tuple(leaf.shape)) for leaf in tail_codec.leaves}
                got = {
                    k: (str(t.dtype).removeprefix("torch."), tuple(t.shape))
                    for k, t in decoded.items()
                }
                if got != want:
                    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                    problem = "the server refuses the tensors: " + ", ".join(
                        f"{k} sent {got.get(k)} expected {want.get(k)}" for k in diff[:4]
                    )
                stage[0] = "restore"
                decoded = tail_codec.restore(decoded)
            if problem is None:
                stage[0] = "tail after the wire"
                why = compare(s.tail(decoded), ref)
                if why is not None:
                    return "wrong", f"after the wire: {why}"
    if problem is not None:
        return "wire", f"the wire cannot carry the head's dict: {problem}"
    return "ok", None


def check_model(model: Any, inputs: tuple[Any, ...], *, seed: int = 0) -> dict[str, Any]:
    """Trace ``model`` and check every partition of the list (see the module docstring).

    Returns a dict with ``result`` (a class of `CLASSES` except skipped), ``method``,
    ``n_nodes``, ``n_edges``, ``partitions`` (label -> status), ``counts`` and, for a
    failure, ``reason`` / ``detail``.
    """
    import numpy as np
    import torch

    import cic_fast
    from cic_fast.frontend.tracing import TraceError

    rec: dict[str, Any] = {}
    with torch.no_grad():
        ref = model(*inputs)
        again = model(*inputs)
    if compare(again, ref) is not None:
        raise Skip(f"forward is not deterministic: {compare(again, ref)}")
    t0 = time.perf_counter()
    try:
        g = cic_fast.trace(model, inputs)
    except TraceError as e:
        rec.update(result="refused", reason="TraceError", detail=str(e)[:1500])
        rec["trace_s"] = round(time.perf_counter() - t0, 3)
        return rec
    except Exception as e:
        rec.update(result="error", phase="trace", reason=type(e).__name__, error=error_record(e))
        rec["trace_s"] = round(time.perf_counter() - t0, 3)
        return rec
    rec["trace_s"] = round(time.perf_counter() - t0, 3)
    rec.update(method=g.method, n_nodes=g.n_nodes, n_edges=g.n_edges)
    rec["bytes_zero_nodes"] = int((g.out_bytes[:-1] == 0).sum())

    t0 = time.perf_counter()
    dev, srv = flop_profiles(g)
    rng = np.random.default_rng(seed)
    n = g.n_nodes
    all_server = np.zeros(n, dtype=bool)
    all_server[g.inputs] = True
    masks: list[tuple[str, Any]] = [("all-device", np.ones(n, dtype=bool))]
    masks.append(("all-server", all_server))
    first = int(g.inputs.max()) + 1
    for k in sorted(set(np.linspace(first, n - 1, 5).astype(int).tolist()[1:4])):
        masks.append((f"prefix {k}", prefix(g, k)))
    masks += [(f"random {i}", down_closed(g, rng)) for i in range(3)]
    masks += [(f"min-cut {mbit:g} Mbit/s", mbit) for mbit in BANDWIDTHS_MBIT]

    statuses: dict[str, str] = {}
    first_fail: dict[str, tuple[str, Any]] = {}
    seen: set[bytes] = set()
    for label, mask in masks:
        stage = ["split"]
        try:
            kw: dict[str, Any] = {"device_profile": dev, "server_profile": srv, "graph": g}
            if isinstance(mask, float):
                s = cic_fast.split(model, inputs, bandwidth_bps=mask * 1e6, **kw)
                key = np.asarray(s.partition.on_device, dtype=bool).tobytes()
                if key in seen:
                    statuses[label] = "same"
                    continue
            else:
                key = mask.tobytes()
                if key in seen:
                    continue
                s = cic_fast.split(model, inputs, bandwidth_bps=10e6, on_device=mask, **kw)
            seen.add(key)
            status, detail = check_partition(s, inputs, ref, stage)
            info: Any = detail
            if status != "ok":
                info = {"detail": detail, "partition": label}
                on = np.asarray(s.partition.on_device, dtype=bool)
                info["n_on_device"] = int(on.sum())
                sent_idx = np.asarray(s.partition.sent).tolist()
                info["sent"] = [f"{g.names[i]} {g.shapes[i]}" for i in sent_idx][:6]
        except Exception as e:
            status, info = "error", {"partition": label, "stage": stage[0], **error_record(e)}
        statuses[label] = status
        if status != "ok":
            first_fail.setdefault(status, (label, info))
    rec["check_s"] = round(time.perf_counter() - t0, 3)
    rec["partitions"] = statuses
    counts = Counter(v for v in statuses.values() if v != "same")
    rec["counts"] = dict(counts)
    for status, result in (("wrong", "wrong"), ("error", "error"), ("wire", "wire")):
        if status in first_fail:
            rec["result"] = result
            rec["failure"] = first_fail[status][1]
            rec["failures"] = {k: v[1] for k, v in first_fail.items()}
            break
    else:
        rec["result"] = "correct"
    return rec


# ---------------------------------------------------------------- timm


def timm_params(cache: Path | None = None) -> dict[str, int | None]:
    """Parameter count of every timm model (meta device), cached per timm version."""
    import timm
    import torch

    path = cache or Path.home() / ".cache" / "cic_fast" / f"timm-params-{timm.__version__}.json"
    if path.exists():
        return json.loads(path.read_text())
    out: dict[str, int | None] = {}
    for name in timm.list_models():
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False)
            out[name] = sum(p.numel() for p in m.parameters())
        except Exception:
            out[name] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def timm_family(name: str) -> str:
    from timm.models import _registry

    return _registry._model_to_module.get(name, "?")


def timm_cases(sample: int | None, families: set[str] | None) -> list[dict[str, Any]]:
    """All timm models, or a round-robin sample over families, smallest first."""
    import timm

    names = [n for n in timm.list_models() if families is None or timm_family(n) in families]
    if sample is None:
        return [{"source": "timm", "name": n, "family": timm_family(n)} for n in names]
    params = timm_params()
    by_family: dict[str, list[str]] = defaultdict(list)
    for n in names:
        by_family[timm_family(n)].append(n)
    for fam in by_family.values():
        fam.sort(key=lambda n: (params.get(n) or math.inf, n))
    chosen: list[str] = []
    depth = 0
    while len(chosen) < sample and any(len(v) > depth for v in by_family.values()):
        for fam in sorted(by_family):
            if depth < len(by_family[fam]) and len(chosen) < sample:
                chosen.append(by_family[fam][depth])
        depth += 1
    return [{"source": "timm", "name": n, "family": timm_family(n)} for n in chosen]


def build_timm(name: str, max_params: float) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """A timm model (random weights, eval) and a small input it runs on."""
    import timm
    import torch

    with torch.device("meta"):
        n_params = sum(p.numel() for p in timm.create_model(name).parameters())
    info: dict[str, Any] = {"params": n_params}
    if n_params > max_params:
        raise Skip(f"{n_params / 1e6:.0f}M parameters > {max_params / 1e6:.0f}M")
    cfg = timm.models.get_pretrained_cfg(name)
    c, h, w = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    tries: list[tuple[str, Callable[[], Any], Any]] = []
    if min(h, w) > SMALL_SIZE:
        small = torch.randn(1, c, SMALL_SIZE, SMALL_SIZE)
        tries.append(("64", lambda: model, small))

        def resized() -> Any:
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False, img_size=SMALL_SIZE).eval()

        tries.append(("64 img_size=64", resized, small))
    tries.append((f"{h}x{w} (pretrained_cfg)", lambda: model, torch.randn(1, c, h, w)))
    errors = []
    for label, make, x in tries:
        try:
            m = make()
            with torch.no_grad():
                m(x)
        except Exception as e:
            errors.append(f"{label}: {type(e).__name__}: {str(e).strip()[:120]}")
            continue
        info["input"] = f"{label} {list(x.shape)}"
        return m, (x,), info
    raise Skip("the model fails by itself: " + " | ".join(errors))


# ---------------------------------------------------------------- Hugging Face


def _positional(model: Any, **kw: Any) -> tuple[Any, ...]:
    """Keyword inputs as forward's positional arguments (None in the gaps)."""
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters if p != "self"]
    last = max(params.index(k) for k in kw)
    return tuple(kw.get(p) for p in params[: last + 1])


def _tokens(vocab: int = 99, n: int = 8, seed: int = 1) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, n), generator=g)


def _hf(cls_name: str, cfg_name: str, **cfg: Any) -> Any:
    import torch
    import transformers

    config = getattr(transformers, cfg_name)(**cfg)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXT_FF = {**TEXT, "intermediate_size": 37, "max_position_embeddings": 64}
DEC = {**TEXT_FF, "num_key_value_heads": 1, "use_cache": False}
IMG = {"image_size": 32, "num_channels": 3}


def _text(cls: str, cfg: str, *, mask: bool = True, **kw: Any) -> Callable[[], Any]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        import torch

        m = _hf(cls, cfg, **kw)
        ids = _tokens(kw.get("vocab_size", 99))
        inputs = {"input_ids": ids}
        if mask:
            inputs["attention_mask"] = torch.ones_like(ids)
        return m, _positional(m, **inputs)

    return build


def _seq2seq(cls: str, cfg: str, **kw: Any) -> Callable[[], Any]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        import torch

        m = _hf(cls, cfg, **kw)
        ids = _tokens(kw.get("vocab_size", 99))
        dec = _tokens(kw.get("vocab_size", 99), n=5, seed=2)
        return m, _positional(
            m, input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec
        )

    return build


def _image(cls: str, cfg: str, size: int = 32, **kw: Any) -> Callable[[], Any]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        import torch

        m = _hf(cls, cfg, **kw)
        torch.manual_seed(1)
        return m, _positional(m, pixel_values=torch.randn(1, 3, size, size))

    return build


def _audio(cls: str, cfg: str, **kw: Any) -> Callable[[], Any]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        import torch

        m = _hf(cls, cfg, **kw)
        torch.manual_seed(1)
        return m, _positional(m, input_values=torch.randn(1, 1600))

    return build


def _whisper() -> tuple[Any, tuple[Any, ...]]:
    import torch

    m = _hf(
        "WhisperModel",
        "WhisperConfig",
        vocab_size=99,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_source_positions=16,
        max_target_positions=32,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(1)
    feats = torch.randn(1, 8, 32)  # 2 * max_source_positions frames
    return m, _positional(m, input_features=feats, decoder_input_ids=_tokens(n=5))


def _clip() -> tuple[Any, tuple[Any, ...]]:
    import torch
    import transformers

    text = {**TEXT_FF, "vocab_size": 99}
    vision = {**IMG, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision.update(intermediate_size=37, patch_size=8)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(0)
    m = transformers.CLIPModel(cfg).eval()
    ids = _tokens()
    torch.manual_seed(1)
    px = torch.randn(1, 3, 32, 32)
    return m, _positional(m, input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids))


def _detr() -> tuple[Any, tuple[Any, ...]]:
    import torch
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]
    )
    cfg = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        num_queries=5,
    )
    torch.manual_seed(0)
    m = transformers.DetrModel(cfg).eval()
    torch.manual_seed(1)
    return m, _positional(m, pixel_values=torch.randn(1, 3, 64, 64))


VIT = {**IMG, **TEXT, "intermediate_size": 37, "patch_size": 8}
SWIN = {**IMG, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 2}
SWIN["patch_size"] = 4

#: name -> (family, builder): tiny configs, random weights.
HF_MODELS: dict[str, tuple[str, Callable[[], Any]]] = {
    # encoders
    "bert": ("bert", _text("BertModel", "BertConfig", **TEXT_FF)),
    "bert-seqcls": (
        "bert",
        _text("BertForSequenceClassification", "BertConfig", **TEXT_FF, num_labels=3),
    ),
    "roberta": ("roberta", _text("RobertaModel", "RobertaConfig", **TEXT_FF, pad_token_id=1)),
    "distilbert": (
        "distilbert",
        _text(
            "DistilBertModel",
            "DistilBertConfig",
            vocab_size=99,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=37,
            max_position_embeddings=64,
        ),
    ),
    "albert": (
        "albert",
        _text("AlbertModel", "AlbertConfig", **TEXT_FF, embedding_size=16),
    ),
    "deberta": ("deberta", _text("DebertaModel", "DebertaConfig", **TEXT_FF)),
    "deberta-v2": ("deberta-v2", _text("DebertaV2Model", "DebertaV2Config", **TEXT_FF)),
    "electra": ("electra", _text("ElectraModel", "ElectraConfig", **TEXT_FF, embedding_size=16)),
    # decoders
    "gpt2-lm": (
        "gpt2",
        _text(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=99,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            use_cache=False,
        ),
    ),
    "gpt-neo": (
        "gpt_neo",
        _text(
            "GPTNeoModel",
            "GPTNeoConfig",
            vocab_size=99,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            attention_types=[[["global", "local"], 1]],
            window_size=4,
            max_position_embeddings=64,
            use_cache=False,
        ),
    ),
    "opt": (
        "opt",
        _text(
            "OPTModel",
            "OPTConfig",
            **{k: v for k, v in TEXT_FF.items() if k != "intermediate_size"},
            ffn_dim=37,
            word_embed_proj_dim=32,
            use_cache=False,
        ),
    ),
    "llama-lm": ("llama", _text("LlamaForCausalLM", "LlamaConfig", **DEC)),
    "mistral": ("mistral", _text("MistralModel", "MistralConfig", **DEC, sliding_window=4)),
    "qwen2": ("qwen2", _text("Qwen2Model", "Qwen2Config", **DEC)),
    "phi": ("phi", _text("PhiModel", "PhiConfig", **DEC)),
    "gemma": ("gemma", _text("GemmaModel", "GemmaConfig", **DEC, head_dim=16)),
    "bloom": (
        "bloom",
        _text(
            "BloomModel",
            "BloomConfig",
            vocab_size=99,
            hidden_size=32,
            n_layer=2,
            n_head=2,
            use_cache=False,
        ),
    ),
    # encoder-decoders
    "t5": (
        "t5",
        _seq2seq(
            "T5Model",
            "T5Config",
            vocab_size=99,
            d_model=32,
            d_kv=16,
            d_ff=37,
            num_layers=2,
            num_heads=2,
            use_cache=False,
            decoder_start_token_id=0,
        ),
    ),
    "bart": (
        "bart",
        _seq2seq(
            "BartModel",
            "BartConfig",
            vocab_size=99,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            max_position_embeddings=64,
            use_cache=False,
        ),
    ),
    "marian-mt": (
        "marian",
        _seq2seq(
            "MarianMTModel",
            "MarianConfig",
            vocab_size=99,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            max_position_embeddings=64,
            pad_token_id=98,
            decoder_start_token_id=98,
            use_cache=False,
        ),
    ),
    # vision
    "vit": ("vit", _image("ViTModel", "ViTConfig", **VIT)),
    "deit-cls": (
        "deit",
        _image("DeiTForImageClassification", "DeiTConfig", **VIT, num_labels=5),
    ),
    "swin": ("swin", _image("SwinModel", "SwinConfig", **SWIN)),
    "convnext-cls": (
        "convnext",
        _image(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            num_stages=2,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_labels=5,
        ),
    ),
    "resnet": (
        "resnet",
        _image(
            "ResNetModel", "ResNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]
        ),
    ),
    "mobilevit": (
        "mobilevit",
        _image(
            "MobileViTModel",
            "MobileViTConfig",
            size=64,
            image_size=64,
            hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64],
        ),
    ),
    "segformer-seg": (
        "segformer",
        _image(
            "SegformerForSemanticSegmentation",
            "SegformerConfig",
            size=64,
            hidden_sizes=[8, 16, 16, 32],
            num_attention_heads=[1, 1, 2, 2],
            depths=[1, 1, 1, 1],
            decoder_hidden_size=16,
            num_labels=3,
        ),
    ),
    "detr": ("detr", _detr),
    "clip": ("clip", _clip),
    # audio
    "wav2vec2": (
        "wav2vec2",
        _audio(
            "Wav2Vec2Model",
            "Wav2Vec2Config",
            **TEXT_FF,
            conv_dim=(16, 16),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        ),
    ),
    "hubert": (
        "hubert",
        _audio(
            "HubertModel",
            "HubertConfig",
            **TEXT_FF,
            conv_dim=(16, 16),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        ),
    ),
    "whisper": ("whisper", _whisper),
}


def hf_cases(families: set[str] | None) -> list[dict[str, Any]]:
    return [
        {"source": "hf", "name": name, "family": fam}
        for name, (fam, _) in HF_MODELS.items()
        if families is None or fam in families
    ]


# ---------------------------------------------------------------- the worker


def build(case: dict[str, Any], max_params: float) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The model and inputs of a case (raises Skip when out of scope)."""
    import torch

    if case["source"] == "timm":
        return build_timm(case["name"], max_params)
    try:
        model, inputs = HF_MODELS[case["name"]][1]()
    except Exception as e:
        raise Skip(f"does not build: {type(e).__name__}: {str(e).strip()[:200]}") from e
    info = {"params": sum(p.numel() for p in model.parameters())}
    info["input"] = ", ".join(describe(x) for x in inputs)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:
        raise Skip(f"the model fails by itself: {type(e).__name__}: {str(e)[:200]}") from e
    return model, inputs, info


def run_case(case: dict[str, Any], opts: dict[str, Any], report: Callable[[str], None]) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    rec = dict(case)
    report("build")
    t0 = time.perf_counter()
    try:
        model, inputs, info = build(case, opts["max_params"])
    except Skip as e:
        rec.update(result="skipped", reason=str(e), build_s=round(time.perf_counter() - t0, 3))
        return rec
    except Exception as e:
        rec.update(result="skipped", reason=f"does not build: {type(e).__name__}: {e}"[:300])
        return rec
    rec["build_s"] = round(time.perf_counter() - t0, 3)
    rec.update(info)
    if rec["build_s"] > opts["build_limit"]:
        rec.update(result="skipped", reason=f"build took {rec['build_s']:.0f} s")
        return rec
    report("check")
    try:
        rec.update(check_model(model, inputs))
    except Skip as e:
        rec.update(result="skipped", reason=str(e))
    return rec


def worker_main(conn: Any, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        import timm  # noqa: F401  (imported once, not per model)
        import transformers  # noqa: F401
    except ImportError:
        pass
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case, opts = msg
        try:
            rec = run_case(case, opts, lambda phase: conn.send(("phase", phase)))
        except BaseException as e:  # never lose the worker's answer
            rec = {**case, "result": "error", "phase": "bench", "error": error_record(e)}
        conn.send(("result", rec))


class Worker:
    def __init__(self, ctx: Any, threads: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, threads), daemon=True)
        self.proc.start()
        child.close()
        self.case: dict[str, Any] | None = None
        self.phase = ""
        self.started = 0.0
        self.done = 0

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
                self.proc.join(10)
            except Exception:
                pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()


def write_results(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The results file: the run's metadata, then one model per line."""
    lines = ",\n".join(json.dumps(r, separators=(",", ":")) for r in results)
    text = f'{{"meta": {json.dumps(meta, indent=1)},\n"models": [\n{lines}\n]}}\n'
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_all(cases: list[dict[str, Any]], opts: dict[str, Any], out: Path | None, meta: dict):
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    results: list[dict[str, Any]] = []
    if out is not None and opts["resume"] and out.exists():
        results = json.loads(out.read_text())["models"]
        have = {(r["source"], r["name"]) for r in results}
        cases = [c for c in cases if (c["source"], c["name"]) not in have]
    todo = list(cases)
    total = len(results) + len(todo)
    workers = [Worker(ctx, opts["threads"]) for _ in range(min(opts["jobs"], len(todo)) or 1)]

    def save() -> None:
        if out is not None:
            write_results(out, meta, results)

    def finish(w: Worker, rec: dict[str, Any]) -> None:
        rec["wall_s"] = round(time.monotonic() - w.started, 3)
        results.append(rec)
        w.case = None
        w.done += 1
        extra = rec.get("reason") or (rec.get("failure") or {}).get("detail") or ""
        if isinstance(rec.get("error"), dict):
            extra = f"{rec['error']['type']}: {rec['error']['message']}"
        print(
            f"[{len(results)}/{total}] {rec['source']}:"
            f"{rec['name']:<40} {rec['result']:<8} {rec.get('method', '-'):<6} "
            f"{rec['wall_s']:6.1f}s {str(extra)[:110]}",
            flush=True,
        )
        save()

    def busy() -> int:
        return sum(w.case is not None for w in workers)

    try:
        while todo or busy():
            for i, w in enumerate(workers):
                if w.case is None and todo:
                    if w.done >= opts["recycle"] or not w.proc.is_alive():
                        w.stop(kill=not w.proc.is_alive())
                        w = workers[i] = Worker(ctx, opts["threads"])
                    w.case = todo.pop(0)
                    w.phase, w.started = "start", time.monotonic()
                    w.conn.send((w.case, opts))
            now = time.monotonic()
            active = [w for w in workers if w.case is not None]
            timeout = max(0.0, min(w.started + opts["timeout"] - now for w in active))
            ready = wait([w.conn for w in active], timeout=timeout)
            for w in active:
                if w.conn in ready:
                    try:
                        kind, value = w.conn.recv()
                    except (EOFError, OSError):
                        code = w.proc.exitcode
                        case = w.case
                        assert case is not None
                        why = f"worker died in {w.phase} (exit code {code}; out of memory?)"
                        finish(w, {**case, "result": "skipped", "reason": why})
                        w.stop(kill=True)
                        workers[workers.index(w)] = Worker(ctx, opts["threads"])
                        continue
                    if kind == "phase":
                        w.phase = value
                    else:
                        finish(w, value)
                elif time.monotonic() - w.started > opts["timeout"]:
                    case = w.case
                    assert case is not None
                    rec = {**case, "timeout_phase": w.phase}
                    if w.phase in ("start", "build"):
                        rec.update(result="skipped", reason=f"build over {opts['timeout']:g} s")
                    else:
                        msg = f"over {opts['timeout']:g} s in trace/split"
                        err = {"type": "Timeout", "message": msg, "frame": None, "cic_frame": None}
                        rec.update(result="error", reason="Timeout", error=err)
                    w.stop(kill=True)
                    workers[workers.index(w)] = Worker(ctx, opts["threads"])
                    # the new worker has no case; record on the old object
                    w.case = case
                    finish(w, rec)
    finally:
        for w in workers:
            w.stop(kill=w.case is not None)
    return results


# ---------------------------------------------------------------- report


def reason_of(r: dict[str, Any]) -> str:
    """One line: why a model is not correct."""
    if r["result"] == "refused":
        return "TraceError: " + r.get("detail", "")
    if r["result"] == "skipped":
        return r.get("reason", "")
    if r.get("phase") in ("trace", "bench") or r.get("reason") == "Timeout":
        e = r["error"]
        return f"{r.get('phase', 'timeout')}: {e['type']}: {e['message']} [{e.get('cic_frame')}]"
    f = r.get("failure") or {}
    if "type" in f:  # an exception in split/head/tail
        return (
            f"{f['partition']}, in {f.get('stage')}: {f['type']}: {f['message']} "
            f"[{f.get('cic_frame') or f.get('frame')}]"
        )
    return f"{f.get('partition')}: {f.get('detail')}"


#: Root causes of non-correct results (the zoo run's diagnoses; docs/model_frontend.md).
CAUSES = {
    "W1": "an int, a size or a dtype from shape arithmetic (fx: `B, N, C = x.shape`) crosses",
    "W2": "a tuple or list of tensors crosses (unbind, chunk, split, a multi-output aten op)",
    "W3": "a None or bool `forward` argument left at its default crosses (a graph input)",
    "E1": "after the wire: a non-contiguous boundary tensor arrives contiguous and the "
    "tail's view() fails (export drops a `.contiguous()` that was a no-op at trace time)",
    "X1": "after the wire: aliased boundary tensors arrive as copies (an in-place write "
    "on the server misses the other alias)",
}


def causes_of(r: dict[str, Any]) -> list[str]:
    """The root causes (keys of `CAUSES`, or the reason itself) of a non-correct model."""
    if r["result"] in ("correct", "skipped", "refused"):
        return []
    f = r.get("failure") or {}
    if r["result"] == "wire":
        found = set()
        for item in str(f.get("detail", "")).split(": ", 1)[-1].split(", "):
            kind = item.split(": ", 1)[-1]
            if kind.startswith(("int", "float", "Size", "SymInt", "dtype", "device")):
                found.add("W1")
            elif kind.startswith(("tuple", "list")):
                found.add("W2")
            elif kind in ("NoneType", "bool"):
                found.add("W3")
        return sorted(found) or [str(f.get("detail"))]
    if r["result"] == "error" and f.get("stage") == "tail after the wire":
        if "view size is not compatible" in str(f.get("message")):
            return ["E1"]
    if r["result"] == "wrong" and "after the wire" in str(f.get("detail")):
        return ["X1"]
    return [reason_of(r)]


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    rows: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in results:
        c = rows[(r["source"], r["family"])]
        c["tried"] += 1
        c[r["result"]] += 1
        if "method" in r:
            c[r["method"]] += 1
    cols = ["tried", "fx", "export", "refused", "correct", "wire", "wrong", "error", "skipped"]
    out = [
        "| source | family | " + " | ".join(cols) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    total: Counter = Counter()
    for (src, fam), c in sorted(rows.items()):
        out.append(f"| {src} | {fam} | " + " | ".join(str(c[k]) for k in cols) + " |")
        total.update(c)
    for src in sorted({s for s, _ in rows}):
        sub: Counter = Counter()
        for (s, _), c in rows.items():
            if s == src:
                sub.update(c)
        out.append(f"| **{src}** | **all** | " + " | ".join(f"**{sub[k]}**" for k in cols) + " |")
    out.append("| **all** | | " + " | ".join(f"**{total[k]}**" for k in cols) + " |")
    out.append("")
    parts: Counter = Counter()
    mincut: Counter = Counter()
    for r in results:
        parts.update(r.get("counts", {}))
        for label, status in r.get("partitions", {}).items():
            if label.startswith("min-cut") and status != "same":
                mincut[status] += 1
        if any(k.startswith("min-cut") and v == "wire" for k, v in r.get("partitions", {}).items()):
            mincut["models"] += 1
    out.append(
        f"Partitions checked: {sum(parts.values())} (ok {parts['ok']}, wire {parts['wire']}, "
        f"wrong {parts['wrong']}, error {parts['error']}), of which "
        f"{sum(v for k, v in mincut.items() if k != 'models')} distinct min-cut partitions; "
        f"min-cut partitions the runtime cannot send (`wire`): {mincut['wire']}, in "
        f"{mincut['models']} models."
    )
    out.append("")
    bad = [r for r in results if r["result"] != "correct"]
    if bad:
        out.append("Models that are not `correct`, by class and root cause (a model with")
        out.append("several causes is listed under each; the first failing partition's")
        out.append("values name them):")
        out.append("")
        for cls in ("wrong", "error", "wire", "refused", "skipped"):
            these = sorted((r for r in bad if r["result"] == cls), key=lambda r: r["name"])
            if not these:
                continue
            out.append(f"- **{cls}** ({len(these)}):")
            by_cause: dict[str, list[dict[str, Any]]] = defaultdict(list)
            rest = []
            for r in these:
                known = [c for c in causes_of(r) if c in CAUSES]
                for c in known:
                    by_cause[c].append(r)
                if not known:
                    rest.append(r)
            for c, rs in sorted(by_cause.items()):
                names = ", ".join(f"`{r['source']}:{r['name']}`" for r in rs)
                out.append(f"  - {c}, {CAUSES[c]} ({len(rs)}): {names}")
            for r in rest:
                text = reason_of(r).replace("|", "\\|").replace("\n", " ")
                out.append(f"  - `{r['source']}:{r['name']}` ({r['family']}): {text[:300]}")
        out.append("")
    return "\n".join(out)


def git_state() -> str | None:
    """The commit of the checkout this file is in, ``+dirty`` with local changes."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "python"], cwd=root, capture_output=True
        ).stdout.strip()
    except OSError:
        return None
    return (head + ("+dirty" if dirty else "")) or None


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    v: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("torch", "timm", "transformers", "cic_fast"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--timm-sample", type=int, metavar="N", help="N timm models over families")
    g.add_argument("--timm-all", action="store_true", help="every timm model")
    ap.add_argument("--hf", action="store_true", help="the Hugging Face models")
    ap.add_argument("--families", nargs="+", help="only these families (timm module, HF type)")
    ap.add_argument("--models", nargs="+", help="only these model names")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per model (120)")
    ap.add_argument("--build-limit", type=float, default=60.0, help="skip slower builds (60 s)")
    ap.add_argument("--max-params", type=float, default=150e6, help="skip larger (150e6)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1)")
    ap.add_argument("--recycle", type=int, default=20, help="new worker after N models (20)")
    ap.add_argument("--json", type=Path, help="write the results here (after every model)")
    ap.add_argument("--resume", action="store_true", help="skip models already in --json")
    ap.add_argument("--markdown", action="store_true", help="print the markdown report")
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="render saved results instead (merged: a later file's model wins; --json "
        "writes the merge)",
    )
    args = ap.parse_args(argv)

    if args.from_json:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        meta: dict[str, Any] = {}
        for p in args.from_json:  # a later file's record of a model replaces an earlier one
            d = json.loads(p.read_text())
            merged.update({(r["source"], r["name"]): r for r in d["models"]})
            meta = meta or d["meta"]
        results = list(merged.values())
        if args.json is not None:
            write_results(args.json, meta, results)
        print(markdown(results, meta))
        return 0

    families = set(args.families) if args.families else None
    cases: list[dict[str, Any]] = []
    if args.hf:  # first: few and quick
        cases += hf_cases(families)
    if args.timm_all or args.timm_sample:
        cases += timm_cases(None if args.timm_all else args.timm_sample, families)
    if args.models:
        wanted = set(args.models)
        if not cases:  # names alone: look them up in both sources
            cases = timm_cases(None, families) + hf_cases(families)
        cases = [c for c in cases if c["name"] in wanted]
    if not cases:
        ap.error("nothing to run: give --timm-sample N, --timm-all, --hf or --models")
    meta = {
        "command": "python benches/zoo_coverage.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git": git_state(),
        "settings": {
            k: getattr(args, k) for k in ("timeout", "build_limit", "max_params", "jobs", "threads")
        },
        "checks": {
            "partitions": "all-device, all-server, 3 prefixes, 3 random down-closed, "
            f"min-cut at {', '.join(f'{b:g}' for b in BANDWIDTHS_MBIT)} Mbit/s (FLOP profiles)",
            "rtol": RTOL,
            "atol": ATOL,
        },
    }
    print(f"{len(cases)} models, {args.jobs} worker(s), timeout {args.timeout:g} s", flush=True)
    t0 = time.monotonic()
    opts = {k: getattr(args, k) for k in ("max_params", "build_limit", "timeout", "threads")}
    opts.update(jobs=args.jobs, recycle=args.recycle, resume=args.resume)
    results = run_all(cases, opts, args.json, meta)
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    if args.json is not None:
        write_results(args.json, meta, results)
    counts = Counter(r["result"] for r in results)
    print("totals:", ", ".join(f"{k} {counts[k]}" for k in CLASSES), f"({meta['wall_s']} s)")
    if args.markdown:
        print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
