"""The tails on Ray Serve: ``cic-fast serve --backend ray`` and `Client` over HTTP.

One ``cic-fast serve --backend ray --replicas 2`` subprocess (a local Ray cluster
bounded to 2 CPUs, no dashboard, a 128 MiB object store) serves every test of the
module: a seeded squeezenet1_1 at 32x32, batches of up to 8 requests. This process
joins that cluster (``ray.init(address=...)``) only to kill a replica. Every wait is
bounded (a count and a time). Skipped, with the reason, only where Ray Serve cannot
be imported.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cic_fast.runtime import ray_serve  # noqa: E402

try:
    ray_serve.require_ray()
except ImportError as e:  # the only reason to skip: Ray Serve is not installed
    pytest.skip(str(e), allow_module_level=True)

from cic_fast.cli import main  # noqa: E402
from cic_fast.runtime import http as H  # noqa: E402
from cic_fast.runtime import messages as M  # noqa: E402
from cic_fast.runtime import wire as W  # noqa: E402
from threads import run_threads  # noqa: E402
from zoo import Setup, assert_same  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Ray's own modules warn on import and at shutdown (pydantic, asyncio)
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

START_S = 240.0  # a cold Ray cluster and two replicas on a loaded 2-core machine


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(setup, url, stderr path)`` of a running ``cic-fast serve --backend ray``."""
    tmp = tmp_path_factory.mktemp("ray")
    torch.manual_seed(1)
    setup = Setup(torchvision.models.squeezenet1_1(), torch.randn(1, 3, 32, 32))
    weights = tmp / "w.pt"
    torch.save(setup.model.state_dict(), weights)
    port = H.free_port()
    cmd = [sys.executable, "-m", "cic_fast", "serve", "torchvision:squeezenet1_1"]
    cmd += ["--weights", str(weights), "--input-shape", "1,3,32,32", "--threads", "1"]
    cmd += ["--backend", "ray", "--replicas", "2", "--max-batch", "8", "--batch-wait-ms", "20"]
    cmd += ["--port", str(port), "--ray-cpus", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    log = tmp / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_S)
        if not box or not box[0].startswith("listening on http://"):
            proc.kill()
            raise AssertionError(f"ray server did not start: {box} {log.read_text()[-3000:]}")
        url = box[0].split()[-1]
        assert url == f"http://127.0.0.1:{port}/cic"
        yield setup, url, log
    finally:
        if proc.poll() is None:
            proc.terminate()  # serve.shutdown and the local cluster's end
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        proc.stdout.close()


def post(url: str, body: bytes, headers=None) -> tuple[int, dict, bytes]:
    _, target = H.parse_address(url)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=30)
    try:
        hdrs = {"Content-Type": H.CONTENT_TYPE, **(headers or {})}
        conn.request("POST", target.path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def request_body(setup: Setup, on: np.ndarray, x, rid: int = 1) -> bytes:
    from cic_fast.frontend.cutting import build_parts
    from cic_fast.runtime.fingerprint import traced_fingerprint

    head, _, _ = build_parts(setup.graph, on)
    with torch.inference_mode():
        sent = head(x)
    parts, n = M.encode_request(rid, on, dict(head.codec.flatten(sent)))
    fp = M.encode_hello(traced_fingerprint(setup.graph))
    return (
        W.frame_header(W.MsgType.HELLO, len(fp))
        + fp
        + W.frame_header(W.MsgType.INFER, n)
        + b"".join(bytes(p) for p in parts)
    )


def test_round_trips_equal_local(served):
    setup, url, _ = served
    with setup.client(url, timeout_s=30.0) as cli:
        n = setup.graph.n_nodes
        for on in [setup.all_server(), *(setup.prefix(k) for k in range(3, n, n // 6))]:
            out = cli.infer_partition(on, setup.x)
            assert_same(setup.expected, out)
            assert cli.last.path == "offload", cli.last.error
        assert_same(setup.expected, cli.infer(setup.x))
        for out in cli.stream([setup.x] * 5, on_device=setup.prefix(5)):
            assert_same(setup.expected, out)
        assert cli.last.path == "offload"


def test_batched_answers_equal_unbatched(served):
    """Concurrent requests of one partition, each its own input: batched, and right."""
    setup, url, _ = served
    on = setup.prefix(8)
    torch.manual_seed(7)
    xs = [torch.randn(1, 3, 32, 32) for _ in range(8)]
    with torch.inference_mode():
        want = [setup.model(x) for x in xs]
    bodies = [request_body(setup, on, x, rid=i) for i, x in enumerate(xs)]
    post(url, bodies[0])  # the tail is built (on one replica at least)
    batches: list[int] = []
    for _ in range(10):  # bounded: until a batch formed
        got: dict[int, tuple] = {}

        def work(i: int, got=got) -> None:
            got[i] = post(url, bodies[i])

        run_threads(work, len(xs))
        for i, (status, headers, body) in got.items():
            assert status == 200, body
            rid, _, outs = M.decode_result(body[W.HEADER.size :], W.Limits())
            assert rid == i
            torch.testing.assert_close(outs[0], want[i], rtol=1e-4, atol=1e-5)
            batches.append(int(headers.get(H.BATCH_HEADER.lower(), "1")))
        if max(batches) > 1:
            break
    assert max(batches) > 1, f"no request was batched: {batches}"


def test_malformed_bodies_get_4xx(served):
    setup, url, _ = served
    good = request_body(setup, setup.prefix(5), setup.x)
    status, _, body = post(url, b"\0" * 40)
    assert status == 400
    assert M.decode_error(body[W.HEADER.size :], W.Limits()).code == W.ErrorCode.BAD_FRAME
    status, _, _ = post(url, good[:-7])
    assert status == 400
    status, _, _ = post(url, b"x", headers={"Content-Length": str(1 << 40)})
    assert status in (400, 413)  # ours (413), or the proxy's own refusal of a lying length
    status, _, body = post(url, good)
    assert status == 200


def test_fingerprint_mismatch_is_refused(served):
    setup, url, _ = served
    torch.manual_seed(99)
    other = Setup(torchvision.models.squeezenet1_1(), setup.x)
    with other.client(url, timeout_s=30.0) as cli:
        assert_same(other.expected, cli.infer_partition(other.prefix(5), other.x))
        assert cli.last.path == "fallback-local" and "FINGERPRINT" in cli.last.error


def test_loadtest_against_ray(served, tmp_path, capsys):
    setup, url, _ = served
    weights = tmp_path / "w.pt"
    torch.save(setup.model.state_dict(), weights)
    rc = main(
        [
            "loadtest",
            "torchvision:squeezenet1_1",
            "--weights",
            str(weights),
            "--input-shape",
            "1,3,32,32",
            "--address",
            url,
            "--devices",
            "4",
            "--duration-s",
            "3",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "requests/s" in out and "first answer equals the model's: True" in out


def _replicas(ray) -> list[tuple[str, str]]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [
        (a["name"], a["namespace"])
        for a in names
        if "SERVE_REPLICA" in a["name"] and "CicTail" in a["name"]
    ]


def test_replica_killed_during_a_stream(served):
    """Every request is answered right while a replica dies; the service recovers."""
    import ray

    setup, url, _ = served
    with contextlib.suppress(Exception):
        ray.shutdown()
    ray.init(address="auto", log_to_driver=False, include_dashboard=False)
    try:
        before = _replicas(ray)
        assert len(before) == 2, before
        on = setup.prefix(5)
        paths: list[str] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def stream() -> None:
            try:
                with setup.client(url, timeout_s=10.0, retry_s=0.05, retry_max_s=0.2) as cli:
                    t_end = time.monotonic() + 60.0
                    for _ in range(2000):  # bounded by count and time
                        if stop.is_set() or time.monotonic() > t_end:
                            break
                        assert_same(setup.expected, cli.infer_partition(on, setup.x))
                        paths.append(cli.last.path)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        time.sleep(1.0)
        name, ns = before[0]
        ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
        killed_at = len(paths)
        # the controller starts a new replica; offloads go on meanwhile
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            now = _replicas(ray)
            if len(now) == 2 and name not in {n for n, _ in now}:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no replacement replica: {_replicas(ray)}")
        n_recovered = len(paths)
        time.sleep(2.0)
        stop.set()
        t.join(60)
        assert not t.is_alive() and not errors, errors
        assert len(paths) > killed_at + 5
        # answered by a replica (maybe after Ray's retry), or on the device (an error
        # page, a reset, or a late answer hedged): always the model's answer
        assert set(paths) <= {"offload", "fallback-local", "hedged-local", "hedged-offload"}
        # after the recovery the requests are the server's again
        assert paths[-1] == "offload" and paths[n_recovered:].count("offload") >= 3, paths[-20:]
    finally:
        ray.shutdown()
