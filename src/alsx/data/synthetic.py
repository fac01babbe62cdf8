"""A seeded synthetic link graph with community structure (the demo's built-in data).

Nodes belong to communities of unequal size; out-degrees follow a power law;
a link stays inside its source's community with probability ``p_in`` and picks
its target by popularity (Zipf over a per-community ranking), so there is both
a popularity signal and a personal one for a factorisation to find.
"""

from __future__ import annotations

import numpy as np

from alsx.data.matrix import Interactions


def community_graph(
    n_nodes: int = 40_000,
    n_edges: int = 400_000,
    n_communities: int = 64,
    p_in: float = 0.85,
    zipf: float = 1.1,
    seed: int = 0,
) -> Interactions:
    """A directed graph as a square Interactions (binary, duplicates removed, no self-links).

    Args:
      n_nodes: nodes (rows and columns).
      n_edges: links drawn before duplicates and self-links are removed.
      n_communities: number of communities (sizes ~ Dirichlet(1)).
      p_in: probability a link stays inside its source's community.
      zipf: exponent of the popularity of targets within a community.
      seed: everything is a function of the seed.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.ones(n_communities)) * (n_nodes - n_communities)
    sizes = np.floor(sizes).astype(np.int64) + 1
    sizes[-1] += n_nodes - sizes.sum()
    community = np.repeat(np.arange(n_communities), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    # Power-law out-degree: sources drawn proportional to a Pareto activity.
    activity = rng.pareto(1.5, n_nodes) + 1.0
    src = rng.choice(n_nodes, size=n_edges, p=activity / activity.sum())
    inside = rng.random(n_edges) < p_in
    target_comm = np.where(inside, community[src], rng.integers(0, n_communities, n_edges))
    # Zipf rank within the target community, truncated to its size.
    size_t = sizes[target_comm]
    u = rng.random(n_edges)
    rank = np.floor(size_t * u ** (zipf + 1.0)).astype(np.int64)  # skewed towards rank 0
    rank = np.minimum(rank, size_t - 1)
    # A fixed random order of nodes inside each community defines popularity.
    perm = rng.permutation(n_nodes)
    order = np.argsort(community[perm], kind="stable")
    by_comm = perm[order]
    dst = by_comm[starts[target_comm] + rank]

    keep = src != dst
    key = np.unique(src[keep].astype(np.int64) * n_nodes + dst[keep])
    rows = (key // n_nodes).astype(np.int32)
    cols = (key % n_nodes).astype(np.int32)
    return Interactions(rows=rows, cols=cols, values=np.ones(len(rows), np.float32), shape=(n_nodes, n_nodes))
