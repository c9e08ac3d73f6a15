"""Connected components of the near-duplicate graph, as Beam stages: alternating large-star / small-star rounds.

The algorithm is Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Nodes are
totally ordered (here: document ranks, so a component's minimum is its smallest (document_key, source)); an
edge is stored as (child, parent) with child > parent. One round is two steps, each a grouping by node:

    large-star  at each node u, with m = the smallest of u and all its neighbours: every neighbour v > u is
                linked to m instead of u, i.e. edge {v, u} becomes (v, m)
    small-star  at each node u, with m = the smallest of u and its neighbours below it: u and every neighbour
                below it are linked to m, i.e. edges (u, p) become (p, m) and (u, m)

Both steps keep every component connected and never join two; alternating them reaches, in O(log^2 n) rounds
for n nodes (the paper's bound, and a few rounds in practice even on chains), the fixed point where every
component is a star whose centre is its minimum: then each node's one parent is its component's label.

The rounds are Beam stages, so their number is fixed when the pipeline is built (``max_rounds``). After the
last round a check (a combiner per node: smallest and largest parent, whether it is a parent itself) confirms
the fixed point; if any node still has two parents, or a parent that has a parent, the run fails with an error
naming ``--minhash-max-rounds``, never a wrong clustering.

Groups (node ids only, never text; each read in two passes and never listed):

    large-star  a converged cluster is a star, so its centre's neighbours are the whole cluster. They are never
                one group: a combiner gives each node its smallest neighbour and the parts (a hash of the
                neighbour into SALTS) its larger neighbours fall in, and each part is a group of its own with
                that minimum. A cluster of M documents: about M / SALTS ids per group.
    small-star  one node and its smaller neighbours: the few bands that first linked it, or its one parent.
    Distinct    after each round, Beam's combiner keeps one copy per edge.
    check       a combiner per node (three values).

The distribution GROUP_SIZE_METRIC records every large-star part's and small-star group's size.

The pure step functions below are what the Beam stages run; ``components`` runs them in memory, for tests
and for counting rounds. ``large_star`` is the step as the paper states it: the Beam stages split it into
parts (``salted_large_star``), with the same output.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.counters import COUNTER_NAMESPACE

N = TypeVar("N")  # a node id: anything totally ordered and picklable (here a (document_key, source) tuple)

ROUNDS_FLAG = "--minhash-max-rounds"
SALTS = 1 << 12  # parts a node's large-star group is split into: a star of M leaves is M / SALTS per group
# Distribution of the number of neighbours in one node's group, over every step of every round.
GROUP_SIZE_METRIC = "group_size_near_dedup_components"


def large_star(u: N, neighbours: Iterable[N]) -> Iterable[tuple[N, N]]:
    """Large-star at node ``u``: (v, m) for every neighbour v > u, m the smallest of u and its neighbours.
    ``neighbours`` (every node sharing an edge with u, in either direction) is iterated twice."""
    m = min(neighbours, default=u)
    m = min(m, u)
    for v in neighbours:
        if v > u:
            yield v, m


def small_star(u: N, parents: Iterable[N]) -> Iterable[tuple[N, N]]:
    """Small-star at node ``u``: (v, m) for u and every neighbour v < u (``parents``, iterated twice) except m,
    m the smallest of them."""
    m = min(parents, default=u)
    if m >= u:
        return
    yield u, m
    for v in parents:
        if v != m:
            yield v, m


def salt(node, salts: int) -> int:
    """Which of ``salts`` parts of its parent's large-star group a node goes to: a deterministic hash (blake2b
    of its repr: node ids are ints or tuples of str), never Python's hash()."""
    digest = hashlib.blake2b(repr(node).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % salts


def large_star_marks(edge: tuple[N, N], salts: int) -> Iterable[tuple[N, tuple]]:
    """An edge (child, parent) as the large-star summaries see it: the parent has a larger neighbour (the child,
    in part salt(child)), the child a smaller one (the parent, no part)."""
    c, p = edge
    yield p, (c, salt(c, salts))
    yield c, (p, None)


class NeighbourSummaryFn(beam.CombineFn):
    """Per node: (its smallest neighbour, the parts its larger neighbours are in), from large_star_marks. At most
    ``salts`` parts per node, whatever its degree."""

    def create_accumulator(self):
        return None, set()

    def add_input(self, acc, mark):
        low, parts = acc
        v, part = mark
        if part is not None:
            parts.add(part)
        return (v if low is None or v < low else low), parts

    def merge_accumulators(self, accs):
        low, parts = None, set()
        for a_low, a_parts in accs:
            if a_low is not None and (low is None or a_low < low):
                low = a_low
            parts |= a_parts
        return low, parts

    def extract_output(self, acc):
        return acc[0], sorted(acc[1])


def large_star_minimum(u: N, summary: tuple) -> Iterable[tuple[tuple[N, int], tuple]]:
    """m = the smallest of u and its neighbours, sent to each part of u's larger neighbours."""
    low, parts = summary
    m = u if low is None or u < low else low
    for part in parts:
        yield (u, part), ("min", m)


def large_star_children(edge: tuple[N, N], salts: int) -> Iterable[tuple[tuple[N, int], tuple]]:
    """An edge (child, parent) as a member of its parent's large-star part."""
    c, p = edge
    yield (p, salt(c, salts)), ("child", c)


def large_star_part(values: Iterable[tuple]) -> Iterable[tuple[N, N]]:
    """One part of a node u's large-star group (u's m, and some of its larger neighbours v): (v, m) for each v,
    as large_star(u, ...) gives them. ``values`` is iterated twice."""
    m = next(x for kind, x in values if kind == "min")
    for kind, v in values:
        if kind == "child":
            yield v, m


def both_ends(edge: tuple[N, N]) -> Iterable[tuple[N, N]]:
    """An edge (child, parent) keyed by both ends: the input of a large-star grouping."""
    c, p = edge
    yield c, p
    yield p, c


def star_check(node: N, acc: tuple) -> tuple[N, N] | None:
    """After the last round: (node, its component's label) for a node with a parent, None for a centre.
    ``acc`` = (smallest parent, largest parent, is a parent) of the node (StarCheckFn). Raises RuntimeError,
    naming the option to raise, when the node is not part of a star centred on its component's minimum."""
    low, high, is_parent = acc
    if low is None:
        return None
    if low != high or is_parent:
        raise RuntimeError(
            f"near-dedup clustering did not converge in its rounds: node {node!r} still has "
            f"{'two parents' if low != high else 'a parent that has a parent'}; raise {ROUNDS_FLAG} "
            "(each round costs three shuffles of the candidate edges)")
    return node, low


def components(edges: Iterable[tuple[N, N]], max_rounds: int, salts: int = SALTS) -> tuple[dict[N, N], int]:
    """In memory: ({node: its component's smallest node} for every node with a smaller one, rounds that changed
    the edge set). Runs the same steps as ConnectedComponents; raises RuntimeError as it does."""
    current = {(max(a, b), min(a, b)) for a, b in edges if a != b}
    changed = 0
    for _ in range(max_rounds):
        after_large = set(salted_large_star(current, salts))
        after_small = set(_grouped(small_star, after_large))
        if after_small == current:
            break
        current, changed = after_small, changed + 1
    acc: dict = defaultdict(lambda: (None, None, False))
    for c, p in current:
        low, high, _ = acc[c]
        acc[c] = (p if low is None else min(low, p), p if high is None else max(high, p), acc[c][2])
        acc[p] = acc[p][:2] + (True,)
    labels = {}
    for node, a in acc.items():
        out = star_check(node, a)
        if out is not None:
            labels[out[0]] = out[1]
    return labels, changed


def salted_large_star(edges: Iterable[tuple[N, N]], salts: int) -> Iterable[tuple[N, N]]:
    """In memory, the large-star step as ConnectedComponents runs it: summaries, then one group per part."""
    edges = list(edges)
    fn = NeighbourSummaryFn()
    summaries: dict = {}
    for node, mark in (m for e in edges for m in large_star_marks(e, salts)):
        summaries[node] = fn.add_input(summaries.get(node, fn.create_accumulator()), mark)
    parts = defaultdict(list)
    for node, acc in summaries.items():
        for key, value in large_star_minimum(node, fn.extract_output(acc)):
            parts[key].append(value)
    for e in edges:
        for key, value in large_star_children(e, salts):
            parts[key].append(value)
    for key in sorted(parts):
        yield from large_star_part(parts[key])


def _grouped(step, pairs):
    groups = defaultdict(list)
    for k, v in pairs:
        groups[k].append(v)
    for k in sorted(groups):
        yield from step(k, groups[k])


class StarCheckFn(beam.CombineFn):
    """Per node: (smallest parent, largest parent, whether it is a parent), from ("child", p) / ("parent", None)
    marks. A few values per node whatever its degree."""

    def create_accumulator(self):
        return None, None, False

    def add_input(self, acc, mark):
        low, high, is_parent = acc
        kind, p = mark
        if kind == "parent":
            return low, high, True
        return (p if low is None or p < low else low), (p if high is None or p > high else high), is_parent

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for low, high, is_parent in accs:
            if low is not None:
                out = self.add_input(self.add_input(out, ("child", low)), ("child", high))
            if is_parent:
                out = out[:2] + (True,)
        return out

    def extract_output(self, acc):
        return acc


def _marks(edge):
    c, p = edge
    yield c, ("child", p)
    yield p, ("parent", None)


def _check(element):
    out = star_check(*element)
    if out is not None:
        yield out


class _StepFn(beam.DoFn):
    """A large-star or small-star step over one node's group, recording the group's size (values, not bytes:
    node ids are small) in a distribution metric, so that a run reports its largest."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.group_size = Metrics.distribution(COUNTER_NAMESPACE, GROUP_SIZE_METRIC)

    def process(self, element):
        node, values = element
        count = 0
        for _ in values:
            count += 1
        self.group_size.update(count)
        yield from self.step(node, values)


class ConnectedComponents(beam.PTransform):
    """(child, parent) edges -> (node, its component's smallest node) for every node that is not its component's
    smallest; ``max_rounds`` large-star/small-star rounds, then the fixed-point check (module docstring)."""

    def __init__(self, max_rounds: int, salts: int = SALTS):
        super().__init__()
        if max_rounds < 1:
            raise ValueError(f"ConnectedComponents needs at least one round ({ROUNDS_FLAG}), got {max_rounds}")
        self.max_rounds, self.salts = max_rounds, salts

    def expand(self, edges):
        edges = edges | "Orient" >> beam.Map(lambda e: (max(e), min(e))) | "NoLoops" >> beam.Filter(
            lambda e: e[0] != e[1]) | "Distinct0" >> beam.Distinct()
        salts = self.salts
        for r in range(1, self.max_rounds + 1):
            minima = (
                edges
                | f"Marks{r}" >> beam.FlatMap(large_star_marks, salts)
                | f"Summaries{r}" >> beam.CombinePerKey(NeighbourSummaryFn())
                | f"Minima{r}" >> beam.FlatMapTuple(large_star_minimum)
            )
            children = edges | f"Children{r}" >> beam.FlatMap(large_star_children, salts)
            edges = (
                (minima, children)
                | f"Parts{r}" >> beam.Flatten()
                | f"GroupLarge{r}" >> beam.GroupByKey()
                | f"LargeStar{r}" >> beam.ParDo(_StepFn(lambda _, values: large_star_part(values)))
                | f"GroupSmall{r}" >> beam.GroupByKey()
                | f"SmallStar{r}" >> beam.ParDo(_StepFn(small_star))
                | f"Distinct{r}" >> beam.Distinct()
            )
        return (
            edges
            | "Marks" >> beam.FlatMap(_marks)
            | "PerNode" >> beam.CombinePerKey(StarCheckFn())
            | "Check" >> beam.FlatMap(_check)
        )
