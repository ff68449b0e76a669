"""Loading: checkpoints read safely, local hub caches, the loaded model and the melody stem separator."""
