"""Classic (non-learned) matting baselines, for comparison with the learned model."""
