"""Small host-side collectives between the processes of a run.

Built on JAX's own (``process_allgather`` and an all_to_all under shard_map over one device
per process), used to assemble an input file that every process read a part of and to fetch
table rows from their owners.  With one process each is the identity.  JAX is imported inside
the functions (as in ``alsx.distributed``): importing this module loads nothing heavy.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _process_mesh():
    """A 1-D mesh ("proc") holding the lowest-id device of every process."""
    import jax
    from jax.sharding import Mesh

    first: dict[int, jax.Device] = {}
    for d in sorted(jax.devices(), key=lambda d: d.id):
        first.setdefault(d.process_index, d)
    return Mesh(np.array([first[p] for p in range(jax.process_count())]), ("proc",))


@functools.cache
def _programs(mesh):
    """(psum, all_to_all) over the process mesh, jitted once (shapes are bucketed by the callers)."""
    import jax
    from jax.sharding import PartitionSpec as P

    psum = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "proc"), mesh=mesh, in_specs=P("proc"), out_specs=P()))
    swap = jax.jit(
        jax.shard_map(
            lambda x: jax.lax.all_to_all(x, "proc", 0, 0, tiled=True),
            mesh=mesh,
            in_specs=P("proc"),
            out_specs=P("proc"),
        )
    )
    return psum, swap


def _bucket(n: int) -> int:
    """n rounded up to 1, 1.25, 1.5 or 1.75 times a power of two: a few compiled shapes
    serve every call, at most 25 % padding."""
    if n <= 4:
        return max(1, int(n))
    step = 1 << ((int(n) - 1).bit_length() - 3)
    return -(-int(n) // step) * step


def allgather_bytes(a):
    """Every process's 1-D array ``a`` (any fixed-size dtype, lengths may differ), in process order.

    Sent as raw bytes, so int64 and float64 survive without jax_enable_x64.
    """
    import jax
    from jax.experimental import multihost_utils

    a = np.ascontiguousarray(a)
    if jax.process_count() == 1:
        return [a]
    raw = a.reshape(-1).view(np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    buf = np.zeros(_bucket(int(sizes.max())), np.uint8)
    buf[: raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [every[p, : sizes[p]].view(a.dtype).copy() for p in range(len(sizes))]


def allreduce_sum(a):
    """Element-wise sum over processes of int array ``a`` (same shape everywhere), as int64.

    Summed as int32 on the devices: each process's counts and the total must stay below 2**31.
    """
    import jax

    a = np.asarray(a)
    if jax.process_count() == 1:
        return a.astype(np.int64)
    if a.size and (np.abs(a).max() >= 2**31 // jax.process_count()):
        raise OverflowError("allreduce_sum: values too large for an int32 sum")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = _process_mesh()
    flat = np.zeros((1, _bucket(a.size)), np.int32)
    flat[0, : a.size] = a.reshape(-1)
    me = mesh.devices.reshape(-1)[jax.process_index()]
    glob = jax.make_array_from_single_device_arrays(
        (mesh.size, flat.shape[1]), NamedSharding(mesh, P("proc")), [jax.device_put(flat, me)]
    )
    total = _programs(mesh)[0](glob)
    return np.asarray(total.addressable_data(0)).reshape(-1)[: a.size].reshape(a.shape).astype(np.int64)


def route(payload, dest, budget_bytes: int = 64 << 20):
    """Sends row ``k`` of ``payload`` [n, F] int32 to process ``dest[k]``; returns what this
    process received [m, F], ordered by sending process, each sender's rows in their order.

    An all-to-all over one device per process: each process sends each other one only the
    rows addressed to it (per-process traffic ~ its own rows, whatever the process count).
    Buffers are padded to the largest sender-receiver count, in rounds of at most
    ``budget_bytes`` per process.
    """
    import jax

    payload = np.ascontiguousarray(payload, np.int32)
    n_proc, me = jax.process_count(), jax.process_index()
    dest = np.asarray(dest, np.int64)
    if n_proc == 1:
        return payload
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    F = payload.shape[1]
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=n_proc)
    starts = np.concatenate([[0], np.cumsum(counts)])
    table = np.stack(allgather_bytes(counts.astype(np.int64)))  # [sender, receiver]
    k_max = int(table.max())
    cap = _bucket(max(1, min(k_max, budget_bytes // max(1, n_proc * F * 4))))
    mesh = _process_mesh()
    device = mesh.devices.reshape(-1)[me]
    sharding = NamedSharding(mesh, P("proc"))
    swap = _programs(mesh)[1]
    got = []
    for lo in range(0, k_max, cap):
        buf = np.zeros((n_proc, cap, F), np.int32)
        for p in range(n_proc):
            take = order[starts[p] + lo : min(starts[p + 1], starts[p] + lo + cap)]
            buf[p, : len(take)] = payload[take]
        glob = jax.make_array_from_single_device_arrays(
            (n_proc * n_proc, cap, F), sharding, [jax.device_put(buf.reshape(n_proc, cap, F), device)]
        )
        out = np.asarray(swap(glob).addressable_data(0)).reshape(n_proc, cap, F)  # block s came from sender s
        got.append([out[s, : max(0, min(cap, int(table[s, me]) - lo))] for s in range(n_proc)])
    return np.concatenate(
        [blk for s in range(n_proc) for blk in (rnd[s] for rnd in got)] or [np.zeros((0, F), np.int32)]
    ).reshape(-1, F)
