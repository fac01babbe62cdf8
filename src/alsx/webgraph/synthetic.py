"""A seeded, streaming generator of web-like graphs for scale runs.

The model:

* **hosts**: nodes are split into ``hosts`` contiguous id ranges whose sizes
  follow a Zipf rank law (size of the h-th host ~ (h + 1)^(-1 / (host_alpha - 1))),
  like a crawl ordered by URL.
* **out-degree**: each non-dangling node gets a target out-degree from a Zipf
  rank law over a random order, D(rank k) ~ k^(-1 / (alpha_out - 1)), so
  out-degrees have a power-law tail with exponent ``alpha_out``; a share
  ``dangling_fraction`` of nodes has no row of its own.
* **locality**: each link of a row stays in the source's host with probability
  ``locality`` (less for hub rows whose host is too small), the target drawn
  by in-rank inside the host (its first node plays the home page); otherwise
  the target is drawn by global in-rank. In-ranks follow the same rank law
  with ``alpha_in``. A row draws until it has its out-degree in *distinct*
  targets, so rows are duplicate-free.
* **reciprocity**: each row link is also emitted reversed with probability q,
  chosen so that the share of arcs whose reverse exists (self-links included,
  as in the 27.0 % quoted for cnr-2000) is about ``reciprocity``: with
  self-link share s, the non-self share r' = (r - s) / (1 - s) = 2q / (1 + q).
  Links reciprocated by chance add a little (about 1-2 points).
* **self-links**: each node carries a self-link with probability
  ``self_link_fraction * n_edges / n_nodes`` (capped at 1).

Chunks are node ranges holding about ``chunk_edges`` arcs; chunk i is a pure
function of (seed, i) (``np.random.default_rng([seed, i])``) and of the global
tables drawn from a separate stream of ``seed``. A reversed arc can repeat a
row arc generated elsewhere; such repeats are removed when the CSR rows are
built and counted in the manifest (``duplicates_removed``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from alsx.webgraph.dataset import WebGraphDataset, open_dataset, write_manifest
from alsx.webgraph.finalize import stage_and_finalize
from alsx.webgraph.variant import DEFAULT_CHUNK_EDGES, Variant, prepare_out, variant_of

# Stream tag of the global tables; chunk streams use [seed, i] with i < 2**32.
_GLOBAL_STREAM = 2**32 + 17


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic web graph (see the module docstring).

    Attributes:
      n_nodes: number of nodes (< 2**31).
      n_edges: number of arcs generated (before deduplication).
      seed: master seed.
      hosts: number of hosts; default ``n_nodes // max(50, 4 * mean degree)``.
      locality: probability that a (non-reciprocal) arc stays in its source's host.
      reciprocity: target share of arcs whose reverse exists.
      self_link_fraction: target share of self-links among arcs.
      alpha_out, alpha_in: power-law exponents of out- and in-degree (> 1).
      host_alpha: power-law exponent of host sizes (> 1).
      dangling_fraction: share of nodes with an empty row (the crawl frontier;
        cnr-2000 has 24 %): no out-links, no self-link, and arcs into them are
        never reversed (the reverse share of the others is raised to compensate).
      chunk_edges: arcs per chunk (memory is about 60 bytes per arc of a chunk).
    """

    n_nodes: int
    n_edges: int
    seed: int = 0
    hosts: int | None = None
    locality: float = 0.8
    reciprocity: float = 0.27
    self_link_fraction: float = 0.027
    alpha_out: float = 2.6
    alpha_in: float = 2.1
    host_alpha: float = 2.0
    dangling_fraction: float = 0.2
    chunk_edges: int = DEFAULT_CHUNK_EDGES

    def __post_init__(self) -> None:
        if not 1 <= self.n_nodes < 2**31:
            raise ValueError(f"n_nodes must be in [1, 2**31); got {self.n_nodes}")
        if self.n_edges < 0:
            raise ValueError(f"n_edges must be >= 0; got {self.n_edges}")
        for name in ("locality", "reciprocity", "self_link_fraction", "dangling_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {v}")
        if self.reciprocity >= 1.0:
            raise ValueError("reciprocity must be < 1")
        for name in ("alpha_out", "alpha_in", "host_alpha"):
            if getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be > 1; got {getattr(self, name)}")
        if self.hosts is not None and not 1 <= self.hosts <= self.n_nodes:
            raise ValueError(f"hosts must be in [1, n_nodes]; got {self.hosts}")
        if self.chunk_edges < 1:
            raise ValueError("chunk_edges must be >= 1")

    @property
    def n_hosts(self) -> int:
        """``hosts``, or by default one host per max(50, 4 * mean degree) nodes.

        Hosts grow with density so that most rows can find their local links
        inside their own host without repeats.
        """
        if self.hosts is not None:
            return self.hosts
        mean_degree = -(-self.n_edges // self.n_nodes)
        return max(1, self.n_nodes // max(50, 4 * mean_degree))

    @property
    def reverse_share(self) -> float:
        """q: share of base arcs also emitted reversed."""
        s, r = self.self_link_fraction, self.reciprocity
        r_ns = max(0.0, (r - s) / (1.0 - s)) if s < 1 else 0.0
        return r_ns / (2.0 - r_ns)


def _powerlaw_span(size: np.ndarray | int, beta: float) -> np.ndarray:
    """The CDF normaliser of :func:`_powerlaw_rank` for ranges of ``size`` (precomputable)."""
    size = np.asarray(size, dtype=np.float64)
    if abs(beta - 1.0) < 1e-9:
        return np.log1p(size)
    return np.power(size + 1.0, 1.0 - beta) - 1.0


def _powerlaw_rank(
    u: np.ndarray, size: np.ndarray | int, beta: float, span: np.ndarray | float | None = None
) -> np.ndarray:
    """int64 ranks in [0, size) with P(rank = k) ~ (k + 1)^(-beta) (continuous inverse CDF).

    Args:
      u: float64 [m] uniforms in [0, 1).
      size: int or int [m] per-draw range.
      span: ``_powerlaw_span(size, beta)`` when already known.
    """
    if span is None:
        span = _powerlaw_span(size, beta)
    if abs(beta - 1.0) < 1e-9:
        x = np.exp(u * span)
    else:
        # x ~ density x^-beta on [1, size + 1): invert the CDF.
        x = np.power(1.0 + u * span, 1.0 / (1.0 - beta))
    r = x.astype(np.int64)
    r -= 1
    return np.minimum(r, np.asarray(size, dtype=np.int64) - 1)


class SynthModel:
    """The global tables of a :class:`SynthSpec` and its chunk generator.

    Attributes (all drawn from one stream of ``seed``):
      host_start: int64 [n_hosts + 1] first node of each host (and n_nodes).
      node_host: int32 [n_nodes] host of each node.
      out_target: int64 [n_nodes] base out-degree each node aims for (0 for dangling nodes).
      perm_in: int32 [n_nodes] node of each global in-rank.
      node_bounds: int64 [n_chunks + 1] chunk i generates the rows of nodes
        [node_bounds[i], node_bounds[i + 1]).
    """

    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, _GLOBAL_STREAM])
        n, h = spec.n_nodes, spec.n_hosts
        w = np.power(np.arange(1, h + 1, dtype=np.float64), -1.0 / (spec.host_alpha - 1.0))
        f = n * w / w.sum()
        sizes = np.maximum(1, np.floor(f)).astype(np.int64)
        diff = n - int(sizes.sum())
        if diff > 0:  # largest remainders get the leftover nodes
            sizes[np.argsort(-(f - np.floor(f)), kind="stable")[:diff]] += 1
        while diff < 0:  # the floor of 1 overshot: take from the largest hosts
            big = np.argsort(-sizes, kind="stable")[: min(-diff, h)]
            sizes[big] -= sizes[big] > 1
            diff = n - int(sizes.sum())
        self.host_start = np.zeros(h + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.host_start[1:])
        self.node_host = np.repeat(np.arange(h, dtype=np.int32), sizes)
        self.beta_in = 1.0 / (spec.alpha_in - 1.0)
        self.host_span = _powerlaw_span(sizes, self.beta_in)  # [n_hosts] in-rank CDF normaliser per host
        self.global_span = float(_powerlaw_span(n, self.beta_in))
        n_src = max(1, int(round(n * (1.0 - spec.dangling_fraction))))
        # Dangling nodes keep empty rows: no self-link, no reversed arc.
        self.p_self_node = min(1.0, spec.self_link_fraction * spec.n_edges / n_src)
        self.q_reverse = min(
            1.0, spec.reverse_share / max(1e-12, n_src / n)
        )  # arcs into dangling nodes are not reversed

        # Out-degrees: a Zipf rank law over the non-dangling nodes (random order),
        # scaled so that self-links + base arcs + reversed arcs ~ n_edges.
        q = spec.reverse_share
        n_base = max(0.0, (spec.n_edges - n_src * self.p_self_node) / (1.0 + q))
        ranks = np.arange(1, n_src + 1, dtype=np.float64)
        wr = np.power(ranks, -1.0 / (spec.alpha_out - 1.0))
        expect = n_base * wr / wr.sum()
        deg = np.floor(expect + rng.random(n_src)).astype(np.int64)  # stochastic rounding keeps the sum
        deg = np.minimum(deg, n - 1)
        self.out_target = np.zeros(n, dtype=np.int64)
        active = rng.permutation(n)[:n_src]
        self.out_target[active] = deg
        self.dangling = np.ones(n, dtype=bool)  # [n] nodes without a row of their own
        self.dangling[active] = False
        self.perm_in = rng.permutation(n).astype(np.int32)
        # Chunks are node ranges holding ~chunk_edges arcs (row + reversed arcs), so a
        # row's candidates all live in one chunk and repeats are removed there.
        per_node = self.out_target * (1.0 + q) + self.p_self_node * ~self.dangling
        cum = np.concatenate([[0.0], np.cumsum(per_node)])
        k = max(1, int(np.ceil(cum[-1] / spec.chunk_edges)))
        bounds = np.searchsorted(cum, np.arange(1, k) * spec.chunk_edges, side="left")
        self.node_bounds = np.unique(np.concatenate([[0], bounds, [n]])).astype(np.int64)

    @property
    def n_chunks(self) -> int:
        return len(self.node_bounds) - 1

    @cached_property
    def host_size(self) -> np.ndarray:
        """int64 [n_hosts]."""
        return np.diff(self.host_start)

    def _targets(self, rng: np.random.Generator, src: np.ndarray, p_local: np.ndarray) -> np.ndarray:
        """int64 [m] one target per source (never the source itself).

        Args:
          src: int64 [m] source nodes; p_local: float64 [m] their local-link probability.
        """
        n = self.spec.n_nodes
        m = len(src)
        host = self.node_host[src].astype(np.int64)
        size = self.host_size[host]
        local = rng.random(m) < p_local
        u = rng.random(m)
        dst = np.empty(m, dtype=np.int64)
        hl = host[local]
        dst[local] = self.host_start[hl] + _powerlaw_rank(u[local], size[local], self.beta_in, self.host_span[hl])
        glob = ~local
        dst[glob] = self.perm_in[_powerlaw_rank(u[glob], n, self.beta_in, self.global_span)]
        # No self-links among row arcs: move such a target to the next node (same host if local).
        clash = np.flatnonzero(dst == src)
        if len(clash):
            cl = clash[local[clash]]
            hs, hz = self.host_start[host[cl]], size[cl]
            dst[cl] = hs + (dst[cl] - hs + 1) % hz
            cg = clash[~local[clash]]
            dst[cg] = (dst[cg] + 1) % n
        return dst

    def chunk(self, i: int, *, max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Arcs of chunk ``i``: (src, dst) int32 [m_i], a pure function of (seed, i).

        Each row of the chunk's nodes draws targets until it has ``out_target``
        distinct ones (rejection of repeats, at most ``max_rounds`` rounds, which
        only hub rows with few reachable targets exhaust); each arc is also
        emitted reversed with probability ``reverse_share``; nodes of the range
        get their self-link.
        """
        sp = self.spec
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range [0, {self.n_chunks})")
        rng = np.random.default_rng([sp.seed, i])
        lo, hi = int(self.node_bounds[i]), int(self.node_bounds[i + 1])
        selfs = (lo + np.flatnonzero((rng.random(hi - lo) < self.p_self_node) & ~self.dangling[lo:hi])).astype(np.int32)

        want = self.out_target[lo:hi]  # [rows]
        size = self.host_size[self.node_host[lo:hi]]
        # A row cannot have more distinct local targets than its host has other
        # pages: hub rows in small hosts link out of the host more often.
        p_local = np.where(size > 1, sp.locality * np.minimum(1.0, (size - 1) / np.maximum(2.0 * want, 1.0)), 0.0)
        accepted: list[np.ndarray] = []  # sorted, disjoint int64 keys (local row << 32 | dst)
        need = want
        for _ in range(max_rounds):
            rows = np.flatnonzero(need > 0)
            if len(rows) == 0:
                break
            row = np.repeat(rows, need[rows])
            dst = self._targets(rng, row + lo, p_local[row])
            key = np.sort((row << 32) | dst)
            new = np.empty(len(key), dtype=bool)
            new[0] = True
            np.not_equal(key[1:], key[:-1], out=new[1:])
            key = key[new]
            for a in accepted:  # drop targets the row already has
                pos = np.minimum(np.searchsorted(a, key), len(a) - 1)
                key = key[a[pos] != key]
            if len(key):
                accepted.append(key)
            need = need - np.bincount(key >> 32, minlength=hi - lo)
        key = np.concatenate(accepted) if accepted else np.zeros(0, dtype=np.int64)
        bs = ((key >> 32) + lo).astype(np.int32)
        bd = (key & 0xFFFFFFFF).astype(np.int32)
        rev = (rng.random(len(bs)) < self.q_reverse) & ~self.dangling[bd]
        return np.concatenate([selfs, bs, bd[rev]]), np.concatenate([selfs, bd, bs[rev]])

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self.n_chunks):
            yield self.chunk(i)


def synth_edge_chunks(spec: SynthSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All arcs of ``spec`` as (src, dst) int32 chunks, for custom writers."""
    return SynthModel(spec).chunks()


_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(SynthSpec) if f.name not in ("n_nodes", "n_edges", "seed"))


def synth_webgraph(
    out_dir: str | os.PathLike,
    n_nodes: int,
    n_edges: int,
    *,
    variant: Variant | None = None,
    checksum: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> WebGraphDataset:
    """Generates a synthetic web graph straight into an on-disk dataset.

    Arcs are generated chunk by chunk twice (count pass, fill pass) and never
    held in memory; peak memory is the O(n_nodes) tables plus one chunk plus one
    sort block. The degree filter and held-out split work as in
    :func:`~alsx.webgraph.build.build_webgraph` (off by default). The dataset
    also stores ``node_host.npy`` (int32 [n_nodes] host of each node).

    Args:
      variant: the filter, split and file layout (:class:`~alsx.webgraph.variant.Variant`;
        default ``Variant(heldout_fraction=0.0)``). Its ``seed`` seeds the generator too.
      options: the graph model's fields (:class:`SynthSpec`: ``hosts``, ``locality``, ...,
        ``chunk_edges``) and the variant's (``seed``, ``min_degree``, ...), by name.

    Returns:
      The opened dataset; ``manifest['counts']`` holds ``generated_edges``,
      ``duplicates_removed`` and the filter/split counts.
    """
    model_options = {k: options.pop(k) for k in list(options) if k in _MODEL_FIELDS}
    var = variant_of(variant, options, "synth_webgraph", heldout_fraction=0.0)
    spec = SynthSpec(n_nodes=n_nodes, n_edges=n_edges, seed=var.seed, **model_options)
    t0 = time.time()
    out_dir = Path(out_dir)
    prepare_out(out_dir, overwrite)
    model = SynthModel(spec)
    counts, fields = stage_and_finalize(
        model.chunks,
        n_nodes,
        out_dir,
        var,
        node_arrays={"node_host": model.node_host},
        n_chunks=model.n_chunks,
        desc="synth",
    )
    params = {
        **dataclasses.asdict(spec),
        "n_hosts": spec.n_hosts,
        "reverse_share": spec.reverse_share,
        "n_chunks": model.n_chunks,
        **var.filter_params(),
        "max_shard_nnz": var.max_shard_nnz,
    }
    counts = {"generated_edges": counts["edges_before_dedupe"], **counts}
    write_manifest(
        out_dir,
        {**fields, "source": "synth", "params": params, "counts": counts, "seconds": round(time.time() - t0, 3)},
        checksum=checksum,
    )
    return open_dataset(out_dir)


__all__ = ["SynthSpec", "SynthModel", "synth_edge_chunks", "synth_webgraph"]
