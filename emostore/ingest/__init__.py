"""Dataset adapters: each turns a corpus into the utterance table (see ``base.COLUMNS``)."""

from emostore.ingest import cmu, csv_table, iemocap, images, meld, sample  # noqa: F401  (registers the adapters)
from emostore.ingest.base import ADAPTERS, COLUMNS, IngestError, IngestResult, Problem, get_adapter

__all__ = ["ADAPTERS", "COLUMNS", "IngestError", "IngestResult", "Problem", "get_adapter"]
