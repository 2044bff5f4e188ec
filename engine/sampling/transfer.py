"""Host-to-device copies that do not make the host wait for the GPU."""

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait for the GPU.

    A plain `.to("cuda")` from pageable memory synchronises the stream after the copy; from pinned memory
    with `non_blocking=True` the copy is queued behind the running kernels and the host moves on (PyTorch's
    pinned-memory cache keeps the buffer alive until the copy is done).
    """
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
