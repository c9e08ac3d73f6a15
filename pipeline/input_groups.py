"""Which input group a document belongs to, for near-dedup within each group (--near-dedup-by input).

FineWeb found that deduplicating each Common Crawl snapshot on its own, rather than all of them together, gives
the better corpus; an input group is one --input glob (one crawl's files, say). A document's group comes from its
source, which names its file: "path:lineno" (JSONL), "path:row" (Parquet), "path:record" (WET), "path" (a text
file); dataset rows ("hf:name:split:row") form the group "hf".
"""
from __future__ import annotations

from pipeline.documents import Document

HF_GROUP = "hf"


class InputGroups:
    """A picklable Document -> group name, from {input file path: group name}."""

    def __init__(self, groups: dict[str, str]):
        self.groups = dict(groups)

    def __call__(self, doc: Document) -> str:
        source = doc.source
        group = self.groups.get(source)
        if group is None:
            group = self.groups.get(source.rpartition(":")[0])
        if group is None:
            if source.startswith("hf:"):
                return HF_GROUP
            # Every source of a file reader starts with its path: a miss means the readers and this map disagree,
            # and silently merging groups would dedup across crawls the user asked to keep apart.
            raise RuntimeError(f"document {doc.id!r} has source {source!r}, which names no input file of this run; "
                               "this is a bug in the read stage")
        return group
