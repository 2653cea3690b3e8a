"""The runtime: run a split for real, the head on the device and the tail on a server.

- `wire`: frames and the tensor codec (no pickle; sizes checked before allocating);
- `messages`: the payload of each frame type;
- `fingerprint`: the model identity both sides compare;
- `estimator`: the client's bandwidth estimate from its own transfers;
- `server`: `Server`, the tails of any partition over TCP;
- `http`: the HTTP form of the protocol (stateless POST bodies of the same frames),
  its service and a standard-library server; `ray_serve`: the same on Ray Serve
  replicas, with batching (optional extra ``cic_fast[ray]``);
- `client`: `Client`, per-request decisions through the Planner, local fallback,
  pipelined streams (`Client.stream`) and a hook for the device's computations.

Both sides take the traced `LayerGraph` (and the Client the `Planner`) that the front
end produced: nothing is traced or planned again, and the model fingerprint is
computed once per traced graph.

See docs/protocol.md.
"""

from cic_fast.runtime.client import Client, DeviceRunner, RequestRecord
from cic_fast.runtime.estimator import BandwidthEstimator
from cic_fast.runtime.server import Server

__all__ = ["BandwidthEstimator", "Client", "DeviceRunner", "RequestRecord", "Server"]
