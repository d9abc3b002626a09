"""Encoder modules, one per encoder family; each registers its classes with ``@register``."""
