"""Credit assignment: how the output error reaches each hidden layer.

* ``BP``: ``W^(l+1)^T delta^(l+1)``, through the next layer's backend (transposed MVM).
* ``FA`` (feedback alignment): a fixed random ``B^(l+1)`` replaces ``W^(l+1)^T``.
* ``DFA`` (direct FA): the output error goes straight to every hidden layer via ``B^l``.

Each rule also says where GRAPES' node importance comes from: BP and FA use the layer's own
rows (incoming weights); DFA the next layer's columns (outgoing weights). Feedback matrices
are seeded and He-uniform like the weights, and held in digital memory.
"""

from __future__ import annotations

from typing import Literal

import torch

from grapes_hw.functional.init import he_uniform
from grapes_hw.models.mlp import Network

CreditName = Literal["bp", "fa", "dfa"]


class BP:
    """Backpropagation."""

    name = "bp"
    direct = False

    def __init__(self, net: Network, generator: torch.Generator | None = None):
        self.net = net

    def hidden_error(self, l: int, delta_next: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Error arriving at hidden layer ``l`` before ``f'(a^l)`` and GRAPES."""
        return self.net.layers[l + 1].backend.backward(delta_next)

    def importance(self, l: int, ideal: bool = False) -> torch.Tensor:
        return self.net.layers[l].backend.abs_sums(1, ideal=ideal)

    def state_bytes(self) -> int:
        return 0


class FA(BP):
    """Feedback alignment (Lillicrap et al. 2016): fixed random feedback weights."""

    name = "fa"

    def __init__(self, net: Network, generator: torch.Generator | None = None):
        super().__init__(net)
        g = generator or torch.Generator().manual_seed(0)
        # B[l] stands in for W^(l+1) (shape n_(l+1) x n_l): error = delta_next @ B[l].
        self.B = [he_uniform(net.layers[l + 1].shape, g) for l in range(net.n_hidden)]

    def hidden_error(self, l: int, delta_next: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return delta_next @ self.B[l].to(delta_next.dtype)

    def state_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.B)


class DFA(BP):
    """Direct feedback alignment (Nøkland 2016): ``delta^l = (B^l e) * f'(a^l)``."""

    name = "dfa"
    direct = True

    def __init__(self, net: Network, generator: torch.Generator | None = None):
        super().__init__(net)
        g = generator or torch.Generator().manual_seed(0)
        n_out = net.layers[-1].shape[0]
        # B[l] maps the output error (n_out) to hidden layer l (n_l): error = e @ B[l].
        self.B = [he_uniform((n_out, net.layers[l].shape[0]), g) for l in range(net.n_hidden)]

    def hidden_error(self, l: int, delta_next: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return e @ self.B[l].to(e.dtype)

    def importance(self, l: int, ideal: bool = False) -> torch.Tensor:
        # Grouped by presynaptic node: column sums of the next layer's |W| (GRAPES.md).
        return self.net.layers[l + 1].backend.abs_sums(0, ideal=ideal)

    def state_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.B)


CREDIT_RULES = {"bp": BP, "fa": FA, "dfa": DFA}


def make_credit(name: str, net: Network, generator: torch.Generator | None = None) -> BP:
    try:
        cls = CREDIT_RULES[name]
    except KeyError:
        raise ValueError(f"credit must be one of {', '.join(CREDIT_RULES)}, got {name!r}") from None
    return cls(net, generator)
