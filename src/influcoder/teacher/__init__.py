"""The teacher: tokenization, per-example LoRA gradients, CountSketch projection, the gradient store, influence labels."""
