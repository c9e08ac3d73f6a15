"""Outputs of ``DoFn.finish_bundle``, for the stages that gather elements into batches within a bundle.

A DoFn that batches (filter_stage, tokenizer_stage, rejected) emits its last, partial batch when the bundle
ends; Beam requires those outputs to carry their window, which ``process`` outputs get implicitly.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue


def in_global_window(value):
    """``value`` in the global window: this pipeline is batch, one window. A TaggedOutput keeps its tag, with its
    value windowed."""
    if isinstance(value, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(value.tag, in_global_window(value.value))
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])
