"""Which cores each worker gets.

Workers are spread over the cores the agent may use, least loaded first, so
two one-core models on a two-core gateway get a core each. When models want
more cores than there are, cores are shared and a warning says so.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

log = logging.getLogger(__name__)


class CoreAllocator:
    def __init__(self, cpus: list[int] | None = None) -> None:
        self._cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self._load: Counter[int] = Counter({cpu: 0 for cpu in self._cpus})
        self._owners: dict[str, list[int]] = {}

    @property
    def cpus(self) -> list[int]:
        return list(self._cpus)

    def assign(self, model: str, wanted: int) -> list[int]:
        """Cores for ``model``; call ``release`` when its worker is gone."""
        self.release(model)
        count = min(wanted, len(self._cpus))
        if count < wanted:
            log.warning(
                "Model model=%s wants %d cores; the agent has %d",
                model, wanted, len(self._cpus),
            )  # fmt: skip
        chosen = sorted(self._cpus, key=lambda cpu: (self._load[cpu], cpu))[:count]
        if any(self._load[cpu] for cpu in chosen):
            log.warning(
                "Model model=%s shares cores %s with another model", model, chosen
            )
        for cpu in chosen:
            self._load[cpu] += 1
        self._owners[model] = sorted(chosen)
        return sorted(chosen)

    def release(self, model: str) -> None:
        for cpu in self._owners.pop(model, []):
            self._load[cpu] -= 1
