"""Prediction on new utterances and conversations: the Python API and the HTTP server."""

from emostore.serve.predictor import Conversation, Predictor

__all__ = ["Conversation", "Predictor"]
