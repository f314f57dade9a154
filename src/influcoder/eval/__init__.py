"""Evaluation: the experiment harness, baselines and costs (research code; nothing in the product imports it)."""
