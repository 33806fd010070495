"""The synthetic-gradient maths, defined once.

Everything that turns a gradient into a synthesizer target or a synthesizer prediction into a module update lives
here, so that the feed-forward network, the recurrent core and the parallel runtime share one definition.

[Note: SG units]
    Losses in synthgrad are batch means, L = (1/B) Σ_b ℓ_b, so the true gradient ∂L/∂h_b carries a factor 1/B
    that has nothing to do with the example. A synthesizer that predicted ∂L/∂h_b directly would have to relearn
    its output scale for every batch size, and its targets would be ~1/B of the per-example gradient (tiny numbers
    that slow Adam's normalisation and turn into denormals on CPU). Synthesizers therefore work in *per-example
    units*: they predict g_b = ∂ℓ_b/∂h_b = B·∂L/∂h_b, and their targets are given in the same units.
    `to_module_grad` divides by B on the way into the module's backward pass, so an oracle synthesizer that
    returns the true per-example gradient reproduces backprop exactly (tests/test_oracle.py).

[Note: SG loss scale]
    The synthesizer regression loss is the squared L2 error *summed over the features of one example and averaged
    over the batch*:  L_SG = (1/B) Σ_b ‖ĝ_b − g_b‖².  This is the "SG L2 loss weighted ×1" of the paper
    (PAPER.md §2) with one explicit reduction; the input synthesizers of complete unlock use the same loss
    against the real inputs. Every code path calls `synthesizer_loss`, so no two paths can disagree on
    mean-vs-sum (PAPER.md §8).

[Note: bootstrapped target]
    With a DNI between every layer, the synthesizer below module i+1 regresses onto
        δ_i = (∂h_{i+1}/∂h_i)ᵀ δ̂_{i+1}
    (PAPER.md §1): the synthetic gradient of the module above carried back through that module. At the top the
    carried gradient is the true loss gradient. `backward_through` computes exactly this as a by-product of the
    backward pass that updates module i+1, so the target costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def synthesizer_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """L2 regression loss of a synthesizer, see [Note: SG loss scale].

    Args:
        prediction: (B, *feature_shape) synthesizer output, with graph to the synthesizer's parameters.
        target: (B, *feature_shape) target; it is detached here so the loss can never reach its producer.

    Returns:
        scalar: (1/B) Σ_b ‖prediction_b − target_b‖².
    """
    if prediction.shape != target.shape:
        raise ValueError(f"synthesizer prediction {tuple(prediction.shape)} != target {tuple(target.shape)}")
    diff = prediction - target.detach()
    return diff.pow(2).flatten(1).sum(1).mean()


def to_module_grad(synthetic: Tensor) -> Tensor:
    """Per-example synthetic gradient (B, ...) -> gradient of the batch-mean loss, see [Note: SG units]."""
    return synthetic / synthetic.shape[0]


def to_synthesizer_units(grad: Tensor) -> Tensor:
    """Gradient of the batch-mean loss (B, ...) -> per-example units, the inverse of `to_module_grad`."""
    return grad * grad.shape[0]


def backward_through(output: Tensor, grad_output: Tensor | None, module_input: Tensor | None) -> Tensor | None:
    """Back-propagate through one module: fills its parameters' `.grad` and returns the carried gradient.

    Args:
        output: the module's output (B, ...), or a scalar loss when `grad_output` is None.
        grad_output: ∂L/∂output in module units (see `to_module_grad`), or None for a scalar loss.
        module_input: the detached leaf (requires_grad) the module was applied to, or None when nobody below
            needs a target.

    Returns:
        (∂output/∂input)ᵀ grad_output in *synthesizer units* (B, ...): the bootstrapped target of the synthesizer
        below (see [Note: bootstrapped target]); None if `module_input` is None.
    """
    if module_input is not None and module_input.grad is not None:
        module_input.grad = None
    torch.autograd.backward(output, grad_output)
    if module_input is None:
        return None
    assert module_input.grad is not None, "module input is not part of the graph that produced output"
    return to_synthesizer_units(module_input.grad)


def accumulate_grads(params: Sequence[Tensor], grads: Sequence[Tensor], alpha: float = 1.0) -> None:
    """p.grad += alpha·g for each pair, as autograd would accumulate it (a fresh `.grad` is a copy)."""
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g * alpha
            else:
                p.grad.add_(g, alpha=alpha)


def batch_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over the batch of the cosine similarity between per-example gradients (B, ...) -> scalar."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=eps).mean()


def one_hot_context(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The cDNI context: the one-hot label (B,) -> (B, num_classes)."""
    return F.one_hot(labels, num_classes).to(dtype)
