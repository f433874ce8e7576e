"""Parameter and multiply-accumulate counts, as steps.md counts them (conv + linear only)."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def complexity(model: nn.Module, image_size: int = 224) -> dict[str, float]:
    """`params` and `gmacs` (conv and linear multiply-accumulates of one image, in 1e9).

    torch's FLOP counter counts only matmuls and convolutions (2 FLOPs per MAC); norms,
    activations, pooling and additions are not counted, as in the paper. The count runs on
    meta tensors (shapes only), so it is instant even for ResNet-200 and leaves the model as is.
    """
    meta_state = {name: t.to("meta") for name, t in [*model.named_parameters(), *model.named_buffers()]}
    image = torch.empty(1, 3, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            functional_call(model, meta_state, (image,))
    finally:
        model.train(was_training)
    return {"params": count_params(model), "gmacs": counter.get_total_flops() / 2e9}
