"""Checkpoint RNG states: CUDA states restored onto the devices this process sees (no GPU needed: faked)."""
from __future__ import annotations

import torch

from nc_core.training import checkpoint


def test_cuda_states_of_more_gpus_than_visible_restore_the_visible_ones(monkeypatch):
    # a checkpoint of a process that saw 2 GPUs, resumed by a worker pinned to one: set_rng_state_all
    # indexed a generator that does not exist (IndexError)
    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((device, s)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: [torch.cuda.default_generators[i] for i in range(len(states))])
    state = checkpoint.rng_state()
    gpu0, gpu1 = torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)
    checkpoint.set_rng_state({**state, "cuda": [gpu0, gpu1]})
    assert [(i, s.tolist()) for i, s in restored] == [(0, gpu0.tolist())]
