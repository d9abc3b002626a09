"""Light heads that train in seconds on stored embeddings.

``models/`` holds one module per head (registered in :mod:`emostore.heads.base`); ``data`` loads
features once into tensors; ``train`` is the single training loop; ``checkpoint`` saves and loads
safetensors + JSON; ``evaluate`` computes the metrics and reports; ``sweep`` trains grids;
``run`` is what the ``train`` command calls.
"""
