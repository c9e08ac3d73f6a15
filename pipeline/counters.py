"""What a preparation run counts: its Beam counters, and every reason a record is dropped, in manifest order.

Counters (namespace COUNTER_NAMESPACE): ``files`` (input files opened), ``read`` (raw records parsed),
``kept`` and ``tokens`` (documents and tokens written to shards), ``rejected_<reason>`` (one per reason).
The manifest lists every reason in REASONS, with 0 for those that never fired, so two runs' counts line up.
"""
from __future__ import annotations

from pipeline import documents, filters

COUNTER_NAMESPACE = "prepare"

# Reasons decided by the Beam stages (the others come from pipeline.documents and pipeline.filters).
UNREADABLE_FILE = "unreadable_file"  # a file that cannot be opened, decompressed or parsed as its format
EXACT_DUPLICATE = "exact_duplicate"  # same dedup_key as a document with a smaller (document_key, source)
REASONS: tuple[str, ...] = (UNREADABLE_FILE,) + documents.REASONS + filters.REASONS + (EXACT_DUPLICATE,)
