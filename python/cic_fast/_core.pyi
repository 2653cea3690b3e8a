"""Type stub for the private C++ extension cic_fast._core."""

from collections.abc import Callable
from typing import Any, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

_Packed = tuple[
    npt.NDArray[np.bool_], npt.NDArray[np.int64], float, float, float, float, float, float
]

_P = TypeVar("_P", bound=PartitionBase)
_P_co = TypeVar("_P_co", bound=PartitionBase, covariant=True)

@disjoint_base
class PartitionBase:
    """Nine read-only fields of a partition priced at one bandwidth (subclass it)."""

    def __new__(
        cls,
        on_device: Any,
        latency_s: Any,
        device_s: Any,
        transfer_s: Any,
        server_s: Any,
        rtt_s: Any,
        bytes_sent: Any,
        sent: Any,
        bandwidth_bps: Any,
    ) -> Self: ...
    @property
    def on_device(self) -> Any: ...
    @property
    def latency_s(self) -> Any: ...
    @property
    def device_s(self) -> Any: ...
    @property
    def transfer_s(self) -> Any: ...
    @property
    def server_s(self) -> Any: ...
    @property
    def rtt_s(self) -> Any: ...
    @property
    def bytes_sent(self) -> Any: ...
    @property
    def sent(self) -> Any: ...
    @property
    def bandwidth_bps(self) -> Any: ...
    def __reduce__(self) -> tuple[type[Self], tuple[Any, ...]]: ...

class _Decide(Protocol[_P_co]):
    def __call__(self, bandwidth_bps: float) -> _P_co: ...

class Graph:
    def __init__(
        self,
        edges: npt.NDArray[np.int64],
        device_s: npt.NDArray[np.float64],
        server_s: npt.NDArray[np.float64],
        out_bytes: npt.NDArray[np.float64],
    ) -> None: ...
    def min_cut(self, bandwidth_bps: float, rtt_s: float = 0.0) -> _Packed: ...
    def min_cut_as(
        self, partition_type: type[_P], bandwidth_bps: float, rtt_s: float = 0.0
    ) -> _P: ...
    def min_period(
        self, bandwidth_bps: float, max_steps: int
    ) -> tuple[npt.NDArray[np.bool_], bool, float, int]: ...
    def evaluate(
        self, on_device: npt.NDArray[np.bool_], bandwidth_bps: float, rtt_s: float = 0.0
    ) -> _Packed: ...
    @property
    def n_nodes(self) -> int: ...
    @property
    def n_edges(self) -> int: ...
    @property
    def inputs(self) -> npt.NDArray[np.int64]: ...
    @property
    def edges(self) -> npt.NDArray[np.int64]: ...
    @property
    def device_s(self) -> npt.NDArray[np.float64]: ...
    @property
    def server_s(self) -> npt.NDArray[np.float64]: ...
    @property
    def out_bytes(self) -> npt.NDArray[np.float64]: ...
    @property
    def network_nodes(self) -> int: ...
    @property
    def network_arc_pairs(self) -> int: ...

class Plan:
    def __init__(self, graph: Graph, rtt_s: float = 0.0) -> None: ...
    @staticmethod
    def from_partitions(graph: Graph, rtt_s: float, partitions: npt.NDArray[np.bool_]) -> Plan: ...
    @property
    def n_nodes(self) -> int: ...
    @staticmethod
    def compressed(graph: Graph, rtt_s: float = 0.0) -> tuple[Plan, dict[str, float]]: ...
    @staticmethod
    def throughput(graph: Graph, rtt_s: float, max_steps: int) -> tuple[Plan, bool, int]: ...
    @staticmethod
    def from_throughput_partitions(
        graph: Graph, rtt_s: float, partitions: npt.NDArray[np.bool_]
    ) -> Plan: ...
    @property
    def n_partitions(self) -> int: ...
    @property
    def num_solves(self) -> int: ...
    @property
    def rtt_s(self) -> float: ...
    @property
    def breakpoints_bps(self) -> npt.NDArray[np.float64]: ...
    @property
    def lines(self) -> npt.NDArray[np.float64]: ...
    def partition(
        self, k: int
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], float, float, float, float]: ...
    def segment(self, bandwidth_bps: float) -> int: ...
    def decide(
        self, bandwidth_bps: float
    ) -> tuple[int, float, float, float, float, float, float]: ...
    def decide_fn(
        self,
        partition_type: type[_P],
        pieces: list[tuple[object, object, float, float, float, int]],
        as_real: Callable[[object, str], float],
    ) -> _Decide[_P]: ...

def compress(
    graph: Graph, passthrough: bool = True, chains: bool = True, blocks: bool = True
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int32],
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    float,
    dict[str, float],
]: ...
