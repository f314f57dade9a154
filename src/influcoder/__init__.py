"""Influcoder: influence-based data attribution for LLMs at scale.

Pipeline (one module per stage, data flowing one way):
records → gradients/projection → store → influence (labels) → distil (encoder) → embed/index → attribute/filter.
"""

__version__ = "0.1.0"

__all__ = ["InfluenceEncoder", "__version__"]


def __getattr__(name):  # lazy: `influcoder --help` must not import torch / sentence-transformers
    if name == "InfluenceEncoder":
        from .student.encoder import InfluenceEncoder

        return InfluenceEncoder
    raise AttributeError(f"module 'influcoder' has no attribute {name!r}")
