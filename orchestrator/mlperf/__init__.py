"""MLPerf Training Llama 3.1 405B: the benchmark's rules, its compliance log, its data layout and its checkpoint chain.

Sources (read, not copied): mlcommons/training ``large_language_model_pretraining/nemo`` (the reference),
mlcommons/training_policies ``training_rules.adoc`` (the rules), mlcommons/logging (log format and compliance
checker), and NVIDIA's submissions in mlcommons/training_results_v5.1 (what accepted logs look like).
"""
