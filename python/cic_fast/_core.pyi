"""Type stub for the private C++ extension cic_fast._core."""

import numpy as np
import numpy.typing as npt

_Packed = tuple[
    npt.NDArray[np.bool_], npt.NDArray[np.int64], float, float, float, float, float, float
]

class Graph:
    def __init__(
        self,
        edges: npt.NDArray[np.int64],
        device_s: npt.NDArray[np.float64],
        server_s: npt.NDArray[np.float64],
        out_bytes: npt.NDArray[np.float64],
    ) -> None: ...
    def min_cut(self, bandwidth_bps: float, rtt_s: float = 0.0) -> _Packed: ...
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
    def network_nodes(self) -> int: ...
    @property
    def network_arc_pairs(self) -> int: ...
