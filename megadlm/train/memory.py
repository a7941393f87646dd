"""What a process really holds in tensors, to check `megadlm plan`'s model-state estimate.

Counts every live torch tensor storage once (deduplicated by storage pointer): parameters,
gradients, DeepSpeed's flat fp32 partitions and Adam moments. Taken between steps, when no
activations are alive, this is the model state of the rank.
"""
from __future__ import annotations

import gc

import torch


def live_tensor_bytes(device_type: str | None = None) -> int:
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
                continue
            if device_type and obj.device.type != device_type:
                continue
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
        except Exception:  # noqa: BLE001 - some tensor subclasses refuse storage access
            continue
        if ptr and ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
    return total
