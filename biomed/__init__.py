"""biomed-serve: train, export and serve biomedical image and DNA models."""

__version__ = "0.1.0"
