"""The reference training backend: a small Llama-style trainer in plain PyTorch (CPU gloo or GPUs over NCCL).

``python -m orchestrator.train.reference --run-dir DIR`` trains the plan in ``DIR/plan.json`` under the contract
both backends obey (log line, checkpoints, signals, exit codes); see :mod:`orchestrator.train.reference.trainer`.
"""
