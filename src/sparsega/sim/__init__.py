"""Synthetic scenes with exact ground truth and a MASt3R prediction simulator (no weights needed)."""
