"""emostore: multimodal emotion recognition for conversations, built on a feature store."""

__version__ = "0.1.0"
