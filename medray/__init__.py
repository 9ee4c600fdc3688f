"""medray: distributed batch evaluation of medical-imaging models on Ray."""

__version__ = "0.1.0"
