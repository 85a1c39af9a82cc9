"""The kernels of oft's torch ops (``oft._ops``), one module per device: ``cpu``, ``cuda``."""
from __future__ import annotations

from collections import OrderedDict


class OperatorCache:
    """At most ``size`` operators and ``max_bytes`` of their R blocks (d * b scalars an operator,
    and nothing else in it grows), the least recently used dropped first."""

    def __init__(self, size: int, max_bytes: int = 1 << 62):
        self.size, self.max_bytes, self.bytes = size, max_bytes, 0
        self._operators = OrderedDict()

    def get(self, key, make, nbytes: int = 0):
        item = self._operators.get(key)
        if item is None:
            item = (make(), nbytes)
            self._operators[key] = item
            self.bytes += nbytes
            while len(self._operators) > 1 and (len(self._operators) > self.size
                                                 or self.bytes > self.max_bytes):
                self.bytes -= self._operators.popitem(last=False)[1][1]
        else:
            self._operators.move_to_end(key)
        return item[0]

    def __len__(self):
        return len(self._operators)

    def clear(self):
        self._operators.clear()
        self.bytes = 0
