"""Recurrent DNI (PAPER.md §4–5): truncated BPTT with a synthetic gradient at every chunk boundary, DNI + Aux,
and the tasks of the paper's recurrent experiments.

Vocabulary, beside the package glossary:
    core      a recurrent module with `initial_state(batch)` and `step(x_t, state)`; its state is a tuple of
              tensors ((h, c) for `LSTMCore`).
    chunk     T consecutive steps trained by one backward pass (truncated BPTT).
    boundary  the state between two chunks; a `BoundarySynthesizer` predicts the gradient of the future loss
              there, trained on the bootstrapped target delivered by the next chunk.

A trainer is a thin loop over `TruncatedBPTT.train_chunk` (streams, e.g. PTB) or `train_sequence`
(episodes, e.g. Copy):

    >>> core = LSTMCore(CopyTask.input_size, 256)
    >>> trainer = TruncatedBPTT(core, nn.Linear(256, 8), bce_step_loss, lambda p: torch.optim.Adam(p, 1e-3),
    ...                         T=3, method="dni")
    >>> batch = CopyTask().sample(32, curriculum.length, generator)
    >>> stats = trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
"""

from synthgrad.recurrent.core import (
    BoundarySynthesizer,
    CellPath,
    ChunkStats,
    Diagonal,
    LSTMCore,
    RecurrentCore,
    RecurrentMethod,
    SynthesizerTarget,
    TraceJacobian,
    TruncatedBPTT,
    flatten_state,
    state_shapes,
    true_future_gradients,
    unflatten_state,
    unroll,
)
from synthgrad.recurrent.tasks import (
    CharCorpus,
    CopyTask,
    Curriculum,
    MultiNetBatch,
    MultiNetTask,
    RepeatCopyTask,
    SequenceBatch,
    TwoAxisCurriculum,
    batchify,
    bce_step_loss,
    bit_errors_by_step,
    bits_per_character,
    char_step_loss,
    evaluate_bpc,
    load_ptb_chars,
    ptb_char_path,
    sequence_bit_errors,
    sequence_cost_bits,
    stream_chunks,
)

__all__ = [
    "BoundarySynthesizer",
    "CellPath",
    "CharCorpus",
    "ChunkStats",
    "CopyTask",
    "Curriculum",
    "Diagonal",
    "LSTMCore",
    "MultiNetBatch",
    "MultiNetTask",
    "RecurrentCore",
    "RecurrentMethod",
    "RepeatCopyTask",
    "SequenceBatch",
    "SynthesizerTarget",
    "TraceJacobian",
    "TruncatedBPTT",
    "TwoAxisCurriculum",
    "batchify",
    "bce_step_loss",
    "bit_errors_by_step",
    "bits_per_character",
    "char_step_loss",
    "evaluate_bpc",
    "flatten_state",
    "load_ptb_chars",
    "ptb_char_path",
    "sequence_bit_errors",
    "sequence_cost_bits",
    "state_shapes",
    "stream_chunks",
    "true_future_gradients",
    "unflatten_state",
    "unroll",
]
