"""vitsearch: local, private semantic image search over a photo library."""

__version__ = "0.1.0"
