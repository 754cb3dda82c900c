"""Staging for asynchronous saves: copy a state dict into CPU buffers that live from one save to the next.

The first save allocates the buffers (pinned on GPU machines, so device-to-host copies run at full bandwidth and
without blocking); later saves only copy into them. The copy is what training waits for; the background writer
then reads the buffers while training changes the live tensors. DTensor shards stay DTensors (with their mesh and
placements) so DCP writes them as shards of the same global tensors.

Built on torch's own state-dict copy helpers (the same that DCP's stagers use), which have kept their behaviour
from torch 2.3 to 2.13; DCP's `DefaultStager` failed on the second save with torch 2.11 (KeyError in its
deep-copy), so it is not used.
"""

from typing import Any

import torch
from torch.distributed._state_dict_utils import (_check_state_dict_similarity, _copy_state_dict,
                                                 _create_cpu_state_dict)


class CpuStager:
    """`stage(state_dict)` -> a copy whose tensors live in reusable CPU buffers (pinned when `pin_memory`)."""

    def __init__(self, pin_memory: bool) -> None:
        self.pin_memory = pin_memory
        self._buffers: dict[str, Any] | None = None

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self._buffers is None or not _check_state_dict_similarity(state_dict, self._buffers):
            self._buffers = None  # free the old buffers before allocating new ones
            self._buffers = _create_cpu_state_dict(state_dict, pin_memory=self.pin_memory)
        staged = _copy_state_dict(state_dict, self._buffers, non_blocking=self.pin_memory, type_check=False)
        if self.pin_memory:
            torch.cuda.synchronize()  # the non-blocking copies must land before training moves on
        return staged

    def close(self) -> None:
        self._buffers = None
