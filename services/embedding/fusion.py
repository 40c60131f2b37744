"""Inference rewrite of a loaded backbone that leaves its outputs as they are, only cheaper to compute.

Profiled inside an ingest actor (py-spy, EfficientNet-Lite0, fp32), a quarter of the forward pass was batch norm
(docs/benchmarks.md, "Batch norms folded into the convolutions"). At inference a batch norm right after a
convolution is a constant affine map per channel: it is folded into that convolution's weights and bias once
(timm's BatchNormAct2d keeps its activation).

The rewrite is checked: the rewritten module must give the original's outputs on a probe batch, or the original is
kept, so an architecture where a convolution's output also feeds something else stays correct.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# The rewritten module's outputs against the original's, fp32, on a probe batch.
AGREEMENT_ATOL = 1e-4
AGREEMENT_RTOL = 1e-3


def fuse_for_inference(module: nn.Module, input_size: int) -> nn.Module:
    """`module` (eval mode, fp32, on its device) with its batch norms folded, when the result agrees with it on a
    probe batch of `input_size`² images; else `module` itself, unchanged."""
    parameter = next(module.parameters(), None)
    if parameter is None:  # nothing to fold into
        return module
    device = parameter.device
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, input_size, input_size, generator=generator).to(device)
    fused = copy.deepcopy(module)
    with torch.no_grad():
        folded = _fold_batch_norms(fused, probe)
        if not folded:
            return module
        agree = _agree(module(probe), fused(probe))
    if not agree:
        log.warning("folding batch norms changed this backbone's outputs: it runs unfused (slower, same vectors)")
        return module
    log.debug("fused for inference: %d batch norms folded into their convolutions", folded)
    return fused


def _agree(expected: Any, actual: Any) -> bool:
    """Whether two module outputs (a tensor, or a tuple of them) are equal within the fusion's tolerance."""
    if isinstance(expected, torch.Tensor):
        return isinstance(actual, torch.Tensor) and expected.shape == actual.shape and bool(
            torch.allclose(expected.float(), actual.float(), atol=AGREEMENT_ATOL, rtol=AGREEMENT_RTOL))
    if isinstance(expected, (tuple, list)):
        return isinstance(actual, (tuple, list)) and len(expected) == len(actual) and all(
            _agree(e, a) for e, a in zip(expected, actual, strict=True))
    return expected == actual


def _parents(module: nn.Module) -> dict[nn.Module, tuple[nn.Module, str]]:
    """Each submodule -> (its parent, its attribute name there)."""
    found = {}
    for parent in module.modules():
        for name, child in parent.named_children():
            found[child] = (parent, name)
    return found


def _fold_batch_norms(module: nn.Module, probe: torch.Tensor) -> int:
    """Fold each eval-mode BatchNorm2d whose input is a Conv2d's output into that convolution; the pairs are found
    by running `probe` through hooks (the forward pass, not the module tree, says what follows what)."""
    # id of each convolution's output -> (the convolution, the output, held so that no other tensor takes its id)
    produced_by: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_hook(conv: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced_by[id(output)] = (conv, output)

    def bn_hook(bn: nn.Module, inputs: Any) -> None:
        made = produced_by.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
        if made is not None and made[1] is inputs[0]:
            pairs.append((made[0], bn))

    hooks = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            hooks.append(sub.register_forward_hook(conv_hook))
        elif _foldable(sub):
            hooks.append(sub.register_forward_pre_hook(bn_hook))
    try:
        module(probe)
    finally:
        for hook in hooks:
            hook.remove()
    # A convolution or a batch norm met twice (a module reused) is left alone: folding would apply twice.
    convs = [conv for conv, _ in pairs]
    bns = [bn for _, bn in pairs]
    pairs = [(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1]
    parents = _parents(module)
    for conv, bn in pairs:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        parent, name = parents[bn]
        setattr(parent, name, _what_remains(bn))
    return len(pairs)


def _foldable(module: nn.Module) -> bool:
    """An eval-mode batch norm with running statistics whose forward is BatchNorm2d's, or timm's BatchNormAct2d
    (batch norm, then dropout and activation)."""
    plain = type(module) is nn.BatchNorm2d
    timm_act = type(module).__name__ == "BatchNormAct2d" and hasattr(module, "act") and hasattr(module, "drop")
    return (plain or timm_act) and not module.training and module.running_mean is not None \
        and module.running_var is not None


def _what_remains(bn: nn.Module) -> nn.Module:
    """The module that replaces a folded batch norm: nothing, or timm's dropout and activation after it."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act)
