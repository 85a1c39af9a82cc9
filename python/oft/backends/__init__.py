"""The kernels of oft's torch ops (``oft._ops``), one module per device: ``cpu``, ``cuda``."""
from __future__ import annotations

from collections import OrderedDict


class OperatorCache:
    """At most ``size`` operators, the least recently used dropped first (an operator holds its
    R blocks, d * b scalars, and nothing else that grows)."""

    def __init__(self, size: int):
        self.size = size
        self._operators = OrderedDict()

    def get(self, key, make):
        op = self._operators.get(key)
        if op is None:
            op = make()
            self._operators[key] = op
            if len(self._operators) > self.size:
                self._operators.popitem(last=False)
        else:
            self._operators.move_to_end(key)
        return op

    def __len__(self):
        return len(self._operators)

    def clear(self):
        self._operators.clear()
