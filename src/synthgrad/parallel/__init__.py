"""Decoupled training across processes on torch.distributed (issue 3): stages, runtime, launcher, baselines."""
