"""PyTorch eager backend (the baseline)."""
