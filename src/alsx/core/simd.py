"""LLVM intrinsics for the CPU kernels: a cache prefetch and an 8 x 8 transposing gather.

Numba vectorises loops over contiguous floats well, but two things the kernels need are not
loops it can vectorise: a software prefetch, and copying eight table rows into eight buffer
columns (a transpose), which as scalar code costs a load and a store per float.  Both are
emitted here as LLVM IR: the prefetch intrinsic, and eight 8-wide loads, three rounds of
shuffles (unpack, shuffle, 128-bit permute: 24 in all on AVX2) and eight 8-wide stores.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# A kernel's first pass over a row's items is the first touch of each fixed-table row; the rows
# PREFETCH entries ahead are requested while the current one is used (about 15 % on a 1M x 200k
# matrix).
PREFETCH = 8

_I32 = ir.IntType(32)
_F8 = ir.VectorType(ir.FloatType(), 8)


def _item_pointer(context, builder, aty, value, inds):
    """Pointer to value[inds] of a Numba array (no bounds or wrap-around checks)."""
    ary = context.make_array(aty)(context, builder, value)
    return cgutils.get_item_pointer2(
        context,
        builder,
        data=ary.data,
        shape=cgutils.unpack_tuple(builder, ary.shape),
        strides=cgutils.unpack_tuple(builder, ary.strides),
        layout=aty.layout,
        inds=inds,
    )


def _lanes(*idx: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(idx)), [ir.Constant(_I32, i) for i in idx])


@intrinsic
def prefetch(typingctx, table, row, col):
    """Hints the cache line of table[row, col] into all cache levels (LLVM's prefetch)."""

    def codegen(context, builder, sig, args):
        inds = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:])]
        ptr = _item_pointer(context, builder, sig.args[0], args[0], inds)
        i8p = ir.IntType(8).as_pointer()
        name = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), name
        )
        # read, highest temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(table, row, col), codegen


@numba.njit(inline="always")
def prefetch_row(table, row):  # pragma: no cover - compiled
    """Hints every 64-byte line (16 floats) of table[row]."""
    for j in range(0, table.shape[1], 16):
        prefetch(table, row, j)


def _transpose8(builder, v: list) -> list:
    """Eight <8 x float> rows -> eight columns: out[j][r] = v[r][j]."""
    lo, hi = _lanes(0, 8, 1, 9, 4, 12, 5, 13), _lanes(2, 10, 3, 11, 6, 14, 7, 15)
    t = []
    for a in range(0, 8, 2):  # interleave pairs of rows
        t += [builder.shuffle_vector(v[a], v[a + 1], lo), builder.shuffle_vector(v[a], v[a + 1], hi)]
    m1, m2 = _lanes(0, 1, 8, 9, 4, 5, 12, 13), _lanes(2, 3, 10, 11, 6, 7, 14, 15)
    u = []
    for a, b in ((0, 2), (1, 3), (4, 6), (5, 7)):  # then pairs of pairs
        u += [builder.shuffle_vector(t[a], t[b], m1), builder.shuffle_vector(t[a], t[b], m2)]
    l4, h4 = _lanes(0, 1, 2, 3, 8, 9, 10, 11), _lanes(4, 5, 6, 7, 12, 13, 14, 15)
    return (
        [builder.shuffle_vector(u[j], u[j + 4], l4) for j in range(4)]  # then 128-bit halves
        + [builder.shuffle_vector(u[j], u[j + 4], h4) for j in range(4)]
    )


@intrinsic
def gather_t8(typingctx, table, indices, base, col, scale, t0, buf, j0):
    """buf[j0 + j, t0 + r] = scale[t0 + r] * table[indices[base + r], col + j] for r, j in 0..7.

    table: float32 [m, d] C-contiguous (eight floats from ``col`` are read as one vector);
    buf: float32 2-D C-contiguous; scale: float32 1-D, or None for no scaling.
    No bounds checks: the caller keeps every index in range.
    """

    def codegen(context, builder, sig, args):
        t_tab, t_ind, t_base, t_col, t_scale, t_t0, t_buf, t_j0 = sig.args
        tab, ind, base, col, scale, t0, buf, j0 = args
        intp = context.get_value_type(types.intp)
        base, col, t0, j0 = (
            context.cast(builder, v, t, types.intp) for v, t in ((base, t_base), (col, t_col), (t0, t_t0), (j0, t_j0))
        )
        rows = []
        for r in range(8):
            k = ir.Constant(intp, r)
            i = builder.load(_item_pointer(context, builder, t_ind, ind, [builder.add(base, k)]))
            i = context.cast(builder, i, t_ind.dtype, types.intp)
            p = builder.bitcast(_item_pointer(context, builder, t_tab, tab, [i, col]), _F8.as_pointer())
            v = builder.load(p, align=4)
            if not isinstance(t_scale, types.NoneType):
                s = builder.load(_item_pointer(context, builder, t_scale, scale, [builder.add(t0, k)]))
                s = builder.insert_element(ir.Constant(_F8, ir.Undefined), s, ir.Constant(_I32, 0))
                s = builder.shuffle_vector(s, ir.Constant(_F8, ir.Undefined), _lanes(*[0] * 8))
                v = builder.fmul(v, s)
            rows.append(v)
        for j, c in enumerate(_transpose8(builder, rows)):
            p = _item_pointer(context, builder, t_buf, buf, [builder.add(j0, ir.Constant(intp, j)), t0])
            builder.store(c, builder.bitcast(p, _F8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(table, indices, base, col, scale, t0, buf, j0), codegen
