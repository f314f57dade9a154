"""A run: its config tree, the pipeline of steps, the run-folder layout, the fidelity report, the demo."""
