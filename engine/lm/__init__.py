"""The LM's math: one transformer written once, the eager and the capturable decode step, guidance and sampling, the
delay pattern, weight formats."""
