"""One module per head; each registers itself with :func:`emostore.heads.base.register`."""
