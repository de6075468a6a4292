"""Shared test helpers: trained-looking BN statistics, float64 references, relative error."""
from __future__ import annotations

import copy

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer statistics and affine parameters that look trained.

    Fresh BN (mean 0, var 1, gamma 1, beta 0) makes folding a near no-op and hides its bugs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.4)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.6)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.out_channels, generator=g) * 0.1)
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().to(torch.float64)
    out = out.detach().to(device=ref.device, dtype=torch.float64)
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()


def float64_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same network run in float64 on the CPU, NCHW."""
    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        return ref(x.detach().to(device="cpu", dtype=torch.float64).contiguous())


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to nearest TF32 (10 mantissa bits, ties away from zero): what the Triton
    conv's ``cvt.rna.tf32.f32`` does to fp32 operands before a TF32 tensor-core dot."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).reshape(t.shape)


def record_ops():
    """A TorchDispatchMode that records the name of every op dispatched under it (``.names``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    return RecordOps()
