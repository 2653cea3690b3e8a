"""Model identity: the fingerprint a client and a server compare in the handshake."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cic_fast.frontend.tracing import require_program

if TYPE_CHECKING:
    import torch

    from cic_fast.frontend.tracing import LayerGraph

__all__ = ["model_fingerprint", "traced_fingerprint"]


def model_fingerprint(model: torch.nn.Module, graph: LayerGraph) -> str:
    """Hex SHA-256 of the architecture (traced graph, output shapes) and the weights.

    Two processes agree on it exactly when they traced the same architecture at the
    same input shapes and hold bit-identical parameters and buffers.
    """
    h = hashlib.sha256(b"cic_fast.model/1\x00")
    h.update(graph.fingerprint.encode())
    h.update("\x1f".join(graph.shapes).encode())
    h.update(b"\x1e")
    for name, t in sorted(model.state_dict().items()):
        c = t.detach().to("cpu").contiguous()
        h.update(f"{name}\x1f{c.dtype}\x1f{tuple(c.shape)}\x1e".encode())
        if c.numel():
            import torch

            h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def traced_fingerprint(graph: LayerGraph) -> str:
    """`model_fingerprint` of a traced graph's program, computed once per weights.

    The weights hashed are the traced program's (the ones its heads and tails run
    with; they are the model's own, shared). The value is kept on the program
    (`cic_fast.frontend.tracing.TracedProgram.memo`): every `Client` and `Server`
    built from the same traced graph shares one computation, and a change of any
    parameter or buffer (a new state dict, an in-place update, a replaced tensor)
    is noticed and hashed again.

    Raises
    ------
    ValueError
        The graph has no program (loaded from JSON).
    """
    prog = require_program(graph)
    return prog.memo("runtime.model_fingerprint", lambda: model_fingerprint(prog.module, graph))
