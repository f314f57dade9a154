"""Shared ground of every stage: errors, typed config machinery, atomic file writes, hardware (device and precision), model resolution, kill points, metrics."""
