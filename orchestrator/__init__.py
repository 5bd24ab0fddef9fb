"""orchestrator: LLM pretraining on Slurm, end to end.

Data flows one way: profiles -> plan -> render -> submit -> drive -> collect.
"""

__version__ = "0.1.0"
