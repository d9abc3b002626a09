"""Light heads that train in seconds on stored embeddings.

``models/`` holds one module per head (registered in :mod:`emostore.heads.base`); ``data`` loads
features into tensors, or streams them from the store beyond the memory budget (``memory``,
``stream``), with what it needs of the table (``table_columns``); ``train`` is the single training
loop, ``at_once`` fits the heads trained in one go (exact or streaming solvers); ``checkpoint``
saves and loads safetensors + JSON; ``evaluate`` computes the metrics and reports; ``sweep``
trains grids (``sweep_cluster``: on a Dask cluster); ``run`` is what the ``train`` command calls.
"""
