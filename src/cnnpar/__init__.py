"""cnnpar: CNN training and inference scaling on MNIST."""

__version__ = "0.1.0"
