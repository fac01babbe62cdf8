"""What a full-ranking evaluation costs: the top-k selection and one validation score as ``alsx tune`` runs it.

Two tables, written to benchmarks/results_evaluation.md (+ .jsonl):

1. ``alsx.serve.topk.top_k`` against one ``jax.lax.top_k`` over each row and against the two-stage form before
   this change (chunk maxima by a reshape and ``max`` over the short minor axis), on random float32 scores as wide
   as ml1m's, gowalla's and cnr-2000's column counts; seconds per 8,192 rows, k = 20.  All three must return
   the same ids (checked on every run).
2. ``alsx.validation.validation_metric`` on gowalla's validation carve (20 % of each training row, seed 0) with
   random tables at d = 64 and 256: every validation row, and the seeded 10,000-row sample a search scores
   (``config.SEARCH_EVAL_ROWS``), beside one epoch of the CPU engine on the same carve.

Usage: python benchmarks/evaluation.py [--data DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _common as C

MD = C.BENCH / "results_evaluation.md"
JSONL = C.BENCH / "results_evaluation.jsonl"
WIDTHS = {"ml1m": 3_706, "gowalla": 40_981, "cnr-2000": 325_557}
ROWS = 8_192
K = 20


def reshape_top_k(scores, k: int):
    """The two-stage top-k as it was before this change: chunk maxima by ``reshape(...).max(-1)``."""
    import jax
    import jax.numpy as jnp

    from alsx.serve.topk import chunk_width

    n, m = scores.shape
    c = chunk_width(m, k)
    if not c:
        return jax.lax.top_k(scores, k)
    whole = (m // c) * c
    chunk_max = scores[:, :whole].reshape(n, m // c, c).max(axis=-1)
    _, chunks = jax.lax.top_k(chunk_max, k)
    chunks = jnp.sort(chunks, axis=1)
    ids = (chunks[:, :, None] * c + jnp.arange(c, dtype=chunks.dtype)).reshape(n, k * c)
    ids = jnp.concatenate([ids, jnp.broadcast_to(jnp.arange(whole, m, dtype=ids.dtype), (n, m - whole))], axis=1)
    values, pos = jax.lax.top_k(jnp.take_along_axis(scores, ids, axis=1), k)
    return values, jnp.take_along_axis(ids, pos, axis=1)


def time_top_k(repeats: int) -> list[dict]:
    import jax

    from alsx.serve.topk import score_batch, top_k

    variants = {
        "lax.top_k": lambda s: jax.lax.top_k(s, K),
        "two-stage, reshape max (before)": lambda s: reshape_top_k(s, K),
        "two-stage, halving max (alsx)": lambda s: top_k(s, K),
    }
    out = []
    rng = np.random.default_rng(0)
    for name, m in WIDTHS.items():
        batch = min(ROWS, score_batch(m))  # the batch topk_scores uses for this width
        scores = jax.numpy.asarray(rng.standard_normal((batch, m), np.float32))
        ids, row = None, {"data": name, "columns": m, "batch": batch}
        for label, fn in variants.items():
            f = jax.jit(fn)
            got = np.asarray(f(scores)[1])
            assert ids is None or np.array_equal(ids, got), f"{label} disagrees on {name}"
            ids = got
            best = np.inf
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(ROWS // batch):
                    jax.block_until_ready(f(scores))
                best = min(best, time.perf_counter() - t)
            row[label] = best
        print(row, flush=True)
        out.append(row)
    return out


def time_evaluation(repeats: int) -> list[dict]:
    from alsx.config import SEARCH_EVAL_ROWS, Packing
    from alsx.core.backends import make_engine
    from alsx.train import run_epochs
    from alsx.tune import resolved
    from alsx.validation import scored_sample, validation_metric, validation_split

    x = C.load("gowalla")
    val = validation_split(C.split_of("gowalla", x).train, 0.2, 0)
    sample = scored_sample(val, SEARCH_EVAL_ROWS, 0)
    rng = np.random.default_rng(0)
    out = []
    for dim in (64, 256):
        point = {"dim": dim, "unobserved_ratio": 12.0, "reg_ratio": 0.01, "nu": 1.0, "init_scale": 0.1, "cg_steps": 3}
        hp = resolved(point, val.train.nnz, val.train.shape)
        w = rng.standard_normal((x.shape[0], dim), np.float32)
        h = rng.standard_normal((x.shape[1], dim), np.float32)
        row = {"data": "gowalla carve", "dim": dim}
        for label, split in (("all rows", val), (f"{SEARCH_EVAL_ROWS:,}-row sample", sample)):
            validation_metric(w, h, split, hp)  # compiles
            seconds = []
            for _ in range(repeats):
                t = time.perf_counter()
                validation_metric(w, h, split, hp)
                seconds.append(time.perf_counter() - t)
            row[label] = min(seconds)
            row[f"{label}: rows"] = int(np.unique(split.test.rows).size)
        engine = make_engine(val.train.csr(), val.train.csc(), hp, Packing(), backend="cpu")
        stamps: list[float] = []
        run_epochs(engine, repeats + 1, 0, on_epoch=lambda st, s=stamps: s.append(time.perf_counter()))
        row["epoch (cpu engine)"] = float(np.min(np.diff(stamps)))
        print(row, flush=True)
        out.append(row)
    return out


def write(topk: list[dict], ev: list[dict], head: dict) -> None:
    labels = [k for k in topk[0] if k not in ("data", "columns", "batch")]
    lines = [
        "## Full-ranking evaluation: top-k selection and the validation score of a search",
        "",
        f"- command: `{head['command']}`; date {head['date']} UTC; load average before / after: "
        f"{head['load'][0]} / {head['load'][1]}",
        f"- machine: {head['machine']}",
        f"- top-k: seconds per {ROWS:,} rows of random float32 scores, k = {K}, best of {head['repeats']} "
        "(in the batches `topk_scores` uses for the width); the three return the same ids.",
        "",
        "| columns | " + " | ".join(labels) + " | alsx ÷ before |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for r in topk:
        cells = " | ".join(f"{r[k]:.3f}" for k in labels)
        lines.append(f"| {r['columns']:,} ({r['data']}) | {cells} | {r[labels[2]] / r[labels[1]]:.2f} |")
    lines += [
        "",
        "- validation score (`alsx.validation.validation_metric`, Recall@20 with training items excluded) on gowalla's "
        "validation carve with random tables, seconds, best of the repeats; an epoch of the CPU engine on the same "
        "carve beside it (CLI default hyper-parameters at that d).",
        "",
        "| d | all validation rows | sample a search scores | one epoch |",
        "|---|---|---|---|",
    ]
    for r in ev:
        keys = [k for k in r if k.endswith("rows") and ":" not in k] + [k for k in r if k.endswith("sample")]
        cells = [f"{r[k]:.2f} s ({r[k + ': rows']:,} rows)" for k in keys]
        lines.append(f"| {r['dim']} | " + " | ".join(cells) + f" | {r['epoch (cpu engine)']:.2f} s |")
    MD.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_arg(p)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    C.use_data(a)
    load0 = C.loadavg()
    topk = time_top_k(a.repeats)
    ev = time_evaluation(a.repeats)
    head = {
        "command": C.command_line(),
        "date": C.now(),
        "load": [load0, C.loadavg()],
        "machine": C.machine(),
        "repeats": a.repeats,
    }
    C.append_jsonl(JSONL, {**head, "top_k": topk, "evaluation": ev})
    write(topk, ev, head)


if __name__ == "__main__":
    main()
