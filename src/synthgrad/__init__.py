"""synthgrad: Decoupled Neural Interfaces with synthetic gradients, on PyTorch.

Jaderberg et al. 2016, "Decoupled Neural Interfaces using Synthetic Gradients" (arXiv 1608.05343);
Czarnecki et al. 2017, "Understanding Synthetic Gradients and Decoupled Neural Interfaces" (arXiv 1703.00522).

Glossary (one name per idea):
    module        a piece of the user's network, f_i, with its own optimizer.
    interface     the cut between two modules; a synthesizer sits on it.
    synthesizer   a small network that predicts a module's output gradient (gradient synthesizer, M_i) or its
                  input (input synthesizer, I_i, for complete unlock) from local information.
    context       what a synthesizer is conditioned on besides its input: the one-hot label for cDNI.
    target        what a synthesizer regresses onto: the gradient carried back through the module above
                  (bootstrapped), or the true loss gradient at the top; for input synthesizers, the real input.
    stage         a module with its own optimizer and synthesizer in the parallel runtime.

Quick start:
    >>> import synthgrad as sg
    >>> net = sg.decouple(sg.models.fcn((1, 28, 28), 10, layers=4), x[:2], context_dim=10)
    >>> stats = net.train_step(x, y, sg.one_hot_context(y, 10))
"""

from synthgrad import models
from synthgrad.core import (
    backward_through,
    batch_cosine,
    one_hot_context,
    synthesizer_loss,
    to_module_grad,
    to_synthesizer_units,
)
from synthgrad.decoupled import DecoupledSequential, StepStats, decouple
from synthgrad.synthesizers import (
    ConvSynthesizer,
    LinearSynthesizer,
    LowRankSynthesizer,
    MLPSynthesizer,
    Synthesizer,
    SynthesizerKind,
    SynthesizerSpec,
    zero_init_,
)

__version__ = "0.1.0"

__all__ = [
    "ConvSynthesizer",
    "DecoupledSequential",
    "LinearSynthesizer",
    "LowRankSynthesizer",
    "MLPSynthesizer",
    "StepStats",
    "Synthesizer",
    "SynthesizerKind",
    "SynthesizerSpec",
    "backward_through",
    "batch_cosine",
    "decouple",
    "models",
    "one_hot_context",
    "synthesizer_loss",
    "to_module_grad",
    "to_synthesizer_units",
    "zero_init_",
]
