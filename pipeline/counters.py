"""What a preparation run counts: its Beam counters, and every reason a record is dropped, in manifest order.

Counters (namespace COUNTER_NAMESPACE): ``files`` (input files opened), ``read`` (raw records parsed),
``kept`` and ``tokens`` (documents and tokens written to shards), ``rejected_<reason>`` (one per reason).
The manifest lists every reason in REASONS and every edit in EDITS, with 0 for those that never happened, so
two runs' counts line up.

Distributions (same namespace), one per grouping step, of the bytes of the values under one key
(pipeline.packing.packed_size), so that a run reports its largest group: GROUP_METRICS.
"""
from __future__ import annotations

from pipeline import c4_rules, documents, filters, fineweb_rules, language, minhash, pii, urls

COUNTER_NAMESPACE = "prepare"

# Reasons decided by the Beam stages (the others come from the pure modules of each stage).
UNREADABLE_FILE = "unreadable_file"  # a file that cannot be opened, decompressed or parsed as its format
EXACT_DUPLICATE = "exact_duplicate"  # same dedup_key as a document with a smaller (document_key, source)
# In the order of the stages that decide them (pipeline.prepare).
REASONS: tuple[str, ...] = ((UNREADABLE_FILE,) + documents.REASONS + urls.REASONS + language.REASONS + filters.REASONS
                            + c4_rules.REASONS + fineweb_rules.REASONS + (EXACT_DUPLICATE,) + minhash.REASONS)

# Edits that change a kept document's text (lines removed by a rule, redactions), counted per name; the
# manifest's "edits" lists every one, 0 for those that never happened.
EDITS: tuple[str, ...] = c4_rules.EDITS + pii.EDITS

# Grouping step -> the name of its distribution metric of group sizes in bytes.
GROUP_METRICS = {
    "dedup": "group_bytes_dedup",  # (dedup_key, document_key, source): one document and its winner's mark
    "write": "group_bytes_write",  # (split, shard, part): the packed token batches of one part of a shard
    "merge": "group_bytes_merge",  # (split, shard): the names of its run files
    "near_dedup_bands": "group_bytes_near_dedup_bands",  # one band key: the smallest rank of each window holding it
    "near_dedup_apply": "group_bytes_near_dedup_apply",  # one bucket: its packed documents and their decisions
}
