"""Dataset sources, decoding/preprocessing and calibration splits."""
