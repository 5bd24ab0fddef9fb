"""Data preparation: C4 consolidation and tokenization into Megatron indexed datasets."""
