"""The student: the bi-encoder, its distillation, the layer cache, the prior trees, and exact-query scoring."""
