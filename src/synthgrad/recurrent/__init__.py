"""Recurrent DNI (PAPER.md §4–5): truncated BPTT with a synthetic gradient at every chunk boundary, DNI + Aux,
and the tasks of the paper's recurrent experiments.

Vocabulary, beside the package glossary:
    core      a recurrent module with `initial_state(batch)` and `step(x_t, state)`; its state is a tuple of
              tensors ((h, c) for `LSTMCore`).
    chunk     T consecutive steps trained by one backward pass (truncated BPTT).
    boundary  the state between two chunks; its `Interface` holds a `BoundarySynthesizer` M that predicts the
              gradient of the future loss there, M's optimizer, and the target rule M regresses onto
              (`Bootstrap`: the paper's, delivered by the next chunk; `TrueGradient`; `LambdaReturn`).

A trainer is a thin loop over `TruncatedBPTT.train_chunk` (streams, e.g. PTB) or `train_sequence`
(episodes, e.g. Copy):

    >>> core = LSTMCore(CopyTask.input_size, 256)
    >>> boundary = Interface(BoundarySynthesizer.for_core(core), adam(1e-3), rule=Bootstrap(discount=1.0))
    >>> trainer = TruncatedBPTT(core, nn.Linear(256, 8), bce_step_loss, adam(1e-3), T=3, boundary=boundary)
    >>> batch = CopyTask().sample(32, curriculum.length, generator)
    >>> stats = trainer.train_sequence(batch.inputs, batch.targets, batch.mask)

Files: `cells.py` (cores: the LSTM and Graves 2013's peephole LSTM, their inits; state, trace Jacobians),
`chunk.py` (unroll, chunk stats), `boundary.py` (the parts of a method), `sequence_targets.py` (exact and
λ-return targets), `bptt.py` (`TruncatedBPTT`), `tasks.py` (data), `task_config.py` (`RecurrentConfig`),
`runner.py` (`train_recurrent`) with one loop per task (`copy_loop.py`, `ptb_loop.py`, `multinet_loop.py`; the
two networks: `multinet.py`) on `budget.py`;
`rescore.py` re-scores a finished Copy run under the per-step reading of the error threshold.
"""

from synthgrad.recurrent.boundary import (
    AuxTask,
    BoundarySynthesizer,
    RecurrentMethod,
    SynthesizerTarget,
    boundary_rule,
    method_parts,
)
from synthgrad.recurrent.bptt import TruncatedBPTT
from synthgrad.recurrent.cells import (
    CellKind,
    CellPath,
    Diagonal,
    LSTMCore,
    LSTMInit,
    PeepholeLSTMCore,
    RecurrentCore,
    TraceJacobian,
    flatten_state,
    make_core,
    state_shapes,
    unflatten_state,
)
from synthgrad.recurrent.chunk import ChunkStats, unroll
from synthgrad.recurrent.sequence_targets import lambda_returns, true_future_gradients
from synthgrad.recurrent.task_config import RecurrentConfig, RecurrentTask, RepeatCurriculum
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
    paper_score,
    ptb_char_path,
    sequence_bit_errors,
    sequence_cost_bits,
    stream_chunks,
)

__all__ = [
    "AuxTask",
    "BoundarySynthesizer",
    "CellKind",
    "CellPath",
    "CharCorpus",
    "ChunkStats",
    "CopyTask",
    "Curriculum",
    "Diagonal",
    "LSTMCore",
    "LSTMInit",
    "MultiNetBatch",
    "MultiNetTask",
    "PeepholeLSTMCore",
    "RecurrentConfig",
    "RecurrentCore",
    "RecurrentMethod",
    "RecurrentTask",
    "RepeatCopyTask",
    "RepeatCurriculum",
    "SequenceBatch",
    "SynthesizerTarget",
    "TraceJacobian",
    "TruncatedBPTT",
    "TwoAxisCurriculum",
    "batchify",
    "bce_step_loss",
    "bit_errors_by_step",
    "bits_per_character",
    "boundary_rule",
    "char_step_loss",
    "evaluate_bpc",
    "flatten_state",
    "lambda_returns",
    "load_ptb_chars",
    "make_core",
    "method_parts",
    "paper_score",
    "ptb_char_path",
    "sequence_bit_errors",
    "sequence_cost_bits",
    "state_shapes",
    "stream_chunks",
    "true_future_gradients",
    "unflatten_state",
    "unroll",
]
