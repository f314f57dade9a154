"""Influcoder: influence-based data attribution for LLMs at scale.

Pipeline (one module per stage, data flowing one way):
records → gradients/projection → store → influence (labels) → distil (encoder) → embed/index → attribute/filter.
"""

__version__ = "0.1.0"
