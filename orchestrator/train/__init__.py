"""Training backends: NeMo recipes (the product) and a small PyTorch reference trainer (CPUs and the lab)."""
