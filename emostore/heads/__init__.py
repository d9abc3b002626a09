"""Light fusion heads that train on stored embeddings (see the heads issue)."""
