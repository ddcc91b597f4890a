"""A pipeline stage's share of a model (issue 19): the groups one board of a cluster run holds and reads.

A stage is layers ``[start, stop)``; the embedding belongs to the first stage only, the final norm and head to the
last only (a tied head is the embedding table: the last stage then holds that table too, as its head). The memory
planner (:func:`edgespool.schedulers.memory_plan.plan_memory`, ``stage=``) plans only these groups and a KV cache of
only these layers; :class:`edgespool.offload.streaming_source.StreamingWeights` streams only them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError
from ..runtime.bundle.names import EMBED, HEAD, parse_group


@dataclass(frozen=True)
class StageRole:
    """Layers ``[start, stop)``; ``embed``: the stage embeds token ids (the first); ``head``: it runs the final norm
    and head (the last)."""

    start: int
    stop: int
    embed: bool
    head: bool

    @classmethod
    def of_range(cls, start: int, stop: int, num_layers: int) -> "StageRole":
        """The role of layers ``[start, stop)`` of a ``num_layers``-layer model (first embeds, last has the head)."""
        role = cls(int(start), int(stop), int(start) == 0, int(stop) == num_layers)
        role.check(num_layers)
        return role

    def check(self, num_layers: int) -> None:
        """Raise OptionError unless ``0 <= start < stop <= num_layers`` and the ends match the model's ends."""
        if not 0 <= self.start < self.stop <= num_layers:
            raise OptionError(f"stage layers [{self.start}, {self.stop}) outside the model's {num_layers} layers")
        if self.embed != (self.start == 0) or self.head != (self.stop == num_layers):
            raise OptionError(f"stage layers [{self.start}, {self.stop}): the embedding belongs to the stage starting "
                              f"at layer 0 and the head to the one ending at layer {num_layers}")

    @property
    def num_layers(self) -> int:
        return self.stop - self.start

    def has_group(self, group: str, tied: bool) -> bool:
        """Whether this stage holds weight group ``group`` (``tied``: the head is the embedding table)."""
        if group == EMBED:
            return self.embed or (self.head and tied)
        if group == HEAD:
            return self.head
        layer = parse_group(group).layer
        return layer is not None and self.start <= layer < self.stop

    def describe(self) -> str:
        parts = [f"layers {self.start}..{self.stop - 1}"]
        if self.embed:
            parts.append("embedding")
        if self.head:
            parts.append("head")
        return "pipeline stage: " + ", ".join(parts)
