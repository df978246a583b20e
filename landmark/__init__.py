"""landmark: recognise the landmark in a photo and infer where it was taken."""

__version__ = "0.1.0"
