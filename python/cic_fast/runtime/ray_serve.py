"""The tails of a model on Ray Serve: replicas behind Ray's HTTP proxy, with batching.

The optional extra ``pip install "cic_fast[ray]"`` installs Ray Serve. Each replica
(`TailReplica`) loads the model from its spec and weights file (as ``cic-fast
serve`` does), traces it, and answers the HTTP form of the protocol
(`cic_fast.runtime.http`, docs/protocol.md) with an `HttpService`: the same
validation, tail cache and error frames as the TCP server. Requests are stateless,
so Ray's proxy may send any request to any replica, and a replica that dies is
replaced by Ray's controller while the others serve.

Batching (``max_batch`` > 1): requests that reach a replica together are gathered by
``@serve.batch`` (up to ``max_batch`` of them, waiting at most ``batch_wait_ms`` for
more), and those that share a partition run as one tail call
(`HttpService.run_batch`: boundary tensors stacked along the batch dimension when
the tail is batchable, the first batch of each partition checked against one at a
time). With ``max_batch`` 1 each request runs on its own.

`deploy` starts (or joins) a Ray cluster, starts Serve's proxy on ``host:port`` and
runs the application; ``cic-fast serve --backend ray`` calls it.

What crosses the network from a device is never unpickled: the body travels from
Ray's proxy to a replica inside Ray's own RPC between the cluster's processes (which
trust each other), and the replica parses it as frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from cic_fast.runtime import http as H
from cic_fast.runtime import wire as W
from cic_fast.runtime.server import Server

serve: Any = None
Response: Any = None
_MISSING: str | None = None
with warnings.catch_warnings():
    # Ray's own deprecation warnings (pydantic's, ...) are not this package's
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from ray import serve
        from starlette.responses import Response
    except ImportError as e:  # the optional extra is missing: require_ray() says so
        _MISSING = f'the Ray Serve backend needs Ray Serve: pip install "cic_fast[ray]" ({e})'

if TYPE_CHECKING:
    from starlette.requests import Request as HttpRequest

    from cic_fast.frontend.tracing import LayerGraph

__all__ = [
    "APP_NAME",
    "ModelSource",
    "ServeOptions",
    "TailReplica",
    "deploy",
    "require_ray",
    "shutdown",
]

#: The Serve application's name.
APP_NAME = "cic_fast"


@dataclass(frozen=True)
class ModelSource:
    """How a replica builds the model: what ``cic-fast serve`` takes on its command line.

    Attributes
    ----------
    model : str
        ``torchvision:NAME`` or ``package.module:callable``
        (`cic_fast.frontend.models.load_model`).
    weights : str or None
        A state dict file (every replica reads it: a path all nodes see).
    input_shapes : tuple of shapes, or None
        The shapes the model is traced at (default: the spec's canonical one).
    input_dtype : str
        ``"float32"`` or ``"uint8"`` (camera frames).
    seed : int
        Seed of the example inputs (their values do not matter, their shapes do).
    """

    model: str
    weights: str | None = None
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    input_dtype: str = "float32"
    seed: int = 0

    def trace(self) -> LayerGraph:
        """Load the model and trace it (the graph the clients hold too)."""
        from cic_fast.frontend.models import load_model, random_inputs
        from cic_fast.frontend.tracing import trace

        model = load_model(self.model, weights=self.weights, input_dtype=self.input_dtype)
        shapes = [list(s) for s in self.input_shapes] if self.input_shapes else None
        inputs = random_inputs(self.model, shapes, input_dtype=self.input_dtype, seed=self.seed)
        return trace(model, inputs)


@dataclass(frozen=True)
class ServeOptions:
    """The deployment's knobs (``cic-fast serve --backend ray`` flags).

    Attributes
    ----------
    replicas : int
        Replicas of the deployment.
    max_batch : int
        Most requests in one batch (1: no batching).
    batch_wait_ms : float
        Longest wait for a batch to fill, from its first request.
    replica_cpus : float
        CPUs Ray reserves for each replica.
    threads : int
        torch intra-op threads of a replica.
    cache_size : int
        Tails kept built per replica.
    max_frame_bytes : int
        Largest frame (and tensor) accepted.
    max_ongoing : int or None
        Requests a replica takes at once (Ray's ``max_ongoing_requests``); the
        rest wait in Ray's queue. Default: ``max(2 * max_batch, 8)``.
    max_queued : int or None
        Requests that may wait in Ray's queue (Ray's ``max_queued_requests``)
        before the proxy answers 503, which a device's Client takes as BUSY and
        answers locally at once, as with the TCP server's admission queue.
        Default ``16 * replicas``; -1: no bound (Ray's own default), so a
        request may wait for as long as the device's timeout.
    """

    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    replica_cpus: float = 1.0
    threads: int = 1
    cache_size: int = 16
    max_frame_bytes: int = 64 << 20
    max_ongoing: int | None = None
    max_queued: int | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch < 1 or self.threads < 1:
            raise ValueError("replicas, max_batch and threads must be >= 1")
        if not self.batch_wait_ms >= 0 or not self.replica_cpus > 0:
            raise ValueError("batch_wait_ms must be >= 0 and replica_cpus > 0")
        if self.max_queued is not None and self.max_queued < 1 and self.max_queued != -1:
            raise ValueError(f"max_queued must be >= 1 or -1 (no bound), got {self.max_queued}")
        if self.max_ongoing is not None and self.max_ongoing < 1:
            raise ValueError(f"max_ongoing must be >= 1, got {self.max_ongoing}")

    @property
    def ongoing(self) -> int:
        """Ray's ``max_ongoing_requests`` for a replica."""
        return self.max_ongoing or max(2 * self.max_batch, 8)

    @property
    def queued(self) -> int:
        """Ray's ``max_queued_requests`` for the deployment (-1: no bound)."""
        return self.max_queued if self.max_queued is not None else 16 * self.replicas


def require_ray() -> None:
    """Raise ImportError, saying what to install, if Ray Serve is missing."""
    if _MISSING is not None:
        raise ImportError(_MISSING)


def _batch(fn: Any) -> Any:
    """``@serve.batch`` (its sizes are set per replica), or ``fn`` itself without Ray."""
    if serve is None:
        return fn
    return serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)(fn)


def _response(answer: H.Answer, limit: int) -> Any:
    return Response(
        content=answer.body(),
        status_code=answer.status,
        media_type=H.CONTENT_TYPE,
        headers={H.LIMIT_HEADER: str(limit), H.BATCH_HEADER: str(answer.batch)},
    )


class TailReplica:
    """One replica: the model's tails behind Ray Serve's HTTP ingress.

    Parameters
    ----------
    source : ModelSource
        The model to load and trace.
    options : ServeOptions
        Batching, threads, cache and limits.
    """

    def __init__(self, source: ModelSource, options: ServeOptions) -> None:
        require_ray()
        import torch

        torch.set_num_threads(options.threads)
        graph = source.trace()
        limits = W.Limits(
            max_frame_bytes=options.max_frame_bytes, max_tensor_bytes=options.max_frame_bytes
        )
        server = Server(
            graph,
            limits=limits,
            cache_size=options.cache_size,
            workers=1,
            threads=options.threads,
        )
        self.service = H.HttpService(server)
        self.limit = limits.max_frame_bytes
        self.batching = options.max_batch > 1
        # one compute thread: a replica is one worker (Ray runs more replicas)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, "cic-replica", initializer=torch.set_num_threads, initargs=(options.threads,)
        )
        if self.batching:
            batched = cast(Any, self.batched)  # @serve.batch's wrapper has the setters
            batched.set_max_batch_size(options.max_batch)
            batched.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)

    async def __call__(self, request: HttpRequest) -> Any:
        """Answer one POSTed body (see `cic_fast.runtime.http`)."""
        if request.method != "POST":
            return _response(
                H.Answer.error(W.ErrorCode.UNKNOWN_TYPE, "POST a request body"), self.limit
            )
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        refused = self.service.refuse_length(request.headers.get("content-length"), chunked)
        if refused is not None:  # checked before the body is read
            return _response(refused, self.limit)
        body = await request.body()
        loop = asyncio.get_running_loop()
        if not self.batching:
            answer = await loop.run_in_executor(self._pool, self._handle, body)
            return _response(answer, self.limit)
        parsed = self.service.parse(body)
        if isinstance(parsed, H.Answer):
            return _response(parsed, self.limit)
        return _response(await self.batched(parsed), self.limit)

    def _handle(self, body: bytes) -> H.Answer:
        return self.service.handle(body, admit=False)

    @_batch
    async def batched(self, requests: list[H.Request]) -> list[H.Answer]:
        """Run a batch of requests (`HttpService.run_batch`) on the compute thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.service.run_batch, requests)

    def stats(self) -> dict[str, int]:
        """The replica's `HttpService.stats` (for tests and benchmarks)."""
        return dict(self.service.stats)


def deploy(
    source: ModelSource,
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = "/cic",
    ray_address: str | None = None,
    num_cpus: int | None = None,
    object_store_mb: int = 128,
) -> str:
    """Start (or join) a Ray cluster, start Serve's proxy and run the deployment.

    Parameters
    ----------
    source, options : ModelSource, ServeOptions
        The model and the deployment's knobs.
    host, port : str, int
        Where Serve's HTTP proxy listens (port 0: a free port, found here).
    route_prefix : str
        The path requests are posted to.
    ray_address : str, optional
        An existing cluster (``"auto"``, ``"ray://..."``); None starts a local
        one bounded to ``num_cpus`` CPUs (default: the usable cores), an object
        store of ``object_store_mb`` MiB and no dashboard.

    Returns
    -------
    str
        ``http://host:port/prefix``, once every replica is ready.
    """
    require_ray()
    import ray

    from cic_fast.runtime.server import usable_cores

    if not ray.is_initialized():
        if ray_address is not None:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus or usable_cores(),
                include_dashboard=False,
                object_store_memory=object_store_mb << 20,
                log_to_driver=False,
            )
    if port == 0:
        port = H.free_port(host)
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(
        name="CicTail",
        num_replicas=options.replicas,
        max_ongoing_requests=options.ongoing,
        max_queued_requests=options.queued,
        ray_actor_options={"num_cpus": options.replica_cpus},
    )(TailReplica)
    serve.run(deployment.bind(source, options), name=APP_NAME, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix}"


def shutdown(*, stop_ray: bool = True) -> None:
    """Shut Serve down (and the Ray connection, with ``stop_ray``)."""
    require_ray()
    import ray

    serve.shutdown()
    if stop_ray:
        ray.shutdown()
