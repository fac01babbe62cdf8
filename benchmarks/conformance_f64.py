"""cnr-2000 against float64: which engine leaves the float64 trajectory, and by how much.

benchmarks/conformance.py compares the cpu and jax backends with each other; this script puts
both next to a float64 trajectory of the same iteration (tests/reference.py: the same start
tables, 3 warm-started CG steps per row and half-step, the same floor; float64 throughout, row
ranges of segment sums so memory stays bounded at this size) at the CLI defaults:

* per epoch, each engine's own loss and the float64 loss of its float32 tables, relative to the
  float64 trajectory's loss; and ||W - W64|| / ||W64|| (same for H), engine against float64 and
  cpu against jax;
* local errors (--local-epochs): from float32 copies of the float64 tables after epoch k - 1,
  one half-step of each side by each engine against the float64 half-step from the same
  float32 input, overall and by row length (what one epoch's rounding is, before the
  trajectory amplifies it).

    python benchmarks/conformance_f64.py --dim 256 --epochs 10 --local-epochs 1,3

The float64 trajectory (~2 min per epoch at d=256 on 2 busy cores) is cached as float32 tables
and float64 losses under --cache, so a rerun after an engine change only runs the engines.
Writes benchmarks/results_conformance_f64_d<D>.md and .jsonl (--out-prefix: a bare name goes
into benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import _common as C
from conformance import FILE, default_hparams, load_training, machine, out_prefix

sys.path.insert(0, str(C.ROOT / "tests"))
import reference as ref  # noqa: E402 - the float64 oracle lives with the tests

BINS = (1, 11, 101, 1001)  # row lengths [1, 10], [11, 100], [101, 1000], > 1000


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (Frobenius) in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def by_length(x: np.ndarray, want: np.ndarray, lengths: np.ndarray) -> dict:
    """rel() overall and per row-length bin."""
    out = {"all": rel(x, want)}
    edges = list(BINS) + [np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (lengths >= lo) & (lengths < hi)
        if m.any() and np.any(want[m]):
            out[f"{lo}-{int(hi) - 1 if np.isfinite(hi) else 'max'}"] = rel(x[m], want[m])
    return out


class Problem:
    """CSRs, hyper-parameters, lambdas and the float64 pieces of the iteration."""

    def __init__(self, dim: int, max_nodes: int):
        from alsx.model import ALS

        data = load_training(str(C.data_file(FILE)), max_nodes)
        self.hp = ALS(dim=dim, progress=False, **default_hparams()).checked_hparams(data)
        self.rows, self.cols = data.csr(None), data.csc(None)
        hp = self.hp
        a0 = hp.unobserved_weight
        self.lam = (
            ref.csr_lambdas(self.rows.indptr, self.rows.n_cols, hp.reg, a0, hp.nu),
            ref.csr_lambdas(self.cols.indptr, self.cols.n_cols, hp.reg, a0, hp.nu),
        )

    def half(self, i: int, x, other) -> np.ndarray:
        side = (self.rows, self.cols)[i]
        hp = self.hp
        return ref.cg_half_step(
            side.indptr, side.indices, side.values, x, other, self.lam[i], hp.unobserved_weight, hp.cg_steps
        )

    def loss(self, w, h) -> float:
        r = self.rows
        return ref.csr_loss(r.indptr, r.indices, r.values, w, h, *self.lam, self.hp.unobserved_weight)["total"]


def reference_run(pb: Problem, w0, h0, epochs: int, local: list[int], cache: Path) -> dict:
    """The float64 trajectory (tables cached as float32, losses float64) and the float64 half-steps
    of the local experiments, computed once per cache folder."""
    meta = cache / "meta.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if m["epochs"] >= epochs and set(local) <= set(int(k) for k in m["local"]):
            return m
    cache.mkdir(parents=True, exist_ok=True)
    w, h = np.asarray(w0, np.float64), np.asarray(h0, np.float64)
    losses, seconds, local_done = [], [], {}
    for e in range(1, epochs + 1):
        t = time.perf_counter()
        if e in local:  # one epoch from float32 copies of the start: the engines' local input
            w32, h32 = w.astype(np.float32), h.astype(np.float32)
            wl = pb.half(0, w32, h32)
            hl = pb.half(1, h32, wl.astype(np.float32))
            np.save(cache / f"local{e}_w.npy", wl)
            np.save(cache / f"local{e}_h.npy", hl)
            np.save(cache / f"start{e}_w.npy", w32)
            np.save(cache / f"start{e}_h.npy", h32)
            local_done[e] = True
        w = pb.half(0, w, h)
        h = pb.half(1, h, w)
        losses.append(pb.loss(w, h))
        np.save(cache / f"w{e}.npy", w.astype(np.float32))
        np.save(cache / f"h{e}.npy", h.astype(np.float32))
        seconds.append(time.perf_counter() - t)
        print(f"float64 epoch {e}: loss {losses[-1]:.10g}, {seconds[-1]:.0f} s (load {C.loadavg()})", file=sys.stderr)
    m = {"epochs": epochs, "losses": losses, "seconds": seconds, "local": sorted(local_done), "load": C.loadavg()}
    meta.write_text(json.dumps(m))
    return m


def engines(pb: Problem) -> dict:
    from alsx.core.backends import make_engine
    from alsx.core.engine import LocalEngine

    return {
        "cpu": make_engine(pb.rows, pb.cols, pb.hp, backend="cpu"),
        "jax": make_engine(pb.rows, pb.cols, pb.hp, backend="jax"),  # as `alsx train --backend jax`
        "local": LocalEngine(pb.rows, pb.cols, pb.hp),  # one device: what the local half-steps run
    }


def engine_half(eng, side: str, x: np.ndarray, other: np.ndarray) -> np.ndarray:
    """One half-step of ``side`` by ``eng`` from float32 host tables, back as a host table
    in the original basis."""
    import jax.numpy as jnp

    from alsx.core import cpu

    if eng.kind == "cpu":
        csr, lam, starts, threads, solve = eng.kernel_args(side)
        out, _, q = cpu.half_step(
            x, other, csr, lam, eng.hp.unobserved_weight, eng.hp.cg_steps, starts, threads, **solve
        )
        return out.astype(np.float64) @ q.T
    new, _ = eng.half_step(jnp.asarray(x), jnp.asarray(other), side)
    return np.asarray(new, np.float64)


def trajectories(engs: dict, pb: Problem, w0, h0, m: dict, cache: Path, epochs: int) -> tuple[dict, list]:
    """cpu and jax free-running from the start tables, in lock-step, each epoch against the float64 one."""
    seed = default_hparams()["seed"]
    states = {k: engs[k].init_state(seed) for k in ("cpu", "jax")}
    for k, st in states.items():  # one start for every engine: the float64 trajectory's
        assert all(np.array_equal(np.asarray(t), t0) for t, t0 in zip(engs[k].to_numpy(st), (w0, h0))), k
    runs = {k: {"loss": [], "loss_f64_eval": [], "w": [], "h": [], "seconds": []} for k in states}
    cross = []
    for e in range(1, epochs + 1):
        w64, h64 = np.load(cache / f"w{e}.npy"), np.load(cache / f"h{e}.npy")
        f64 = m["losses"][e - 1]
        tables = {}
        for k, eng in engs.items():
            if k not in states:
                continue
            out = runs[k]
            t = time.perf_counter()
            states[k] = st = eng.epoch(states[k])
            lo = eng.loss(st).total
            out["seconds"].append(time.perf_counter() - t)
            w, h = (np.array(x) for x in eng.to_numpy(st))
            tables[k] = w, h
            out["loss"].append(lo)
            out["loss_f64_eval"].append(pb.loss(w, h))
            out["w"].append(rel(w, w64))
            out["h"].append(rel(h, h64))
            print(
                f"{k} epoch {e}: loss rel {abs(lo - f64) / f64:.2e} (f64-evaluated "
                f"{abs(out['loss_f64_eval'][-1] - f64) / f64:.2e}), W {out['w'][-1]:.2e}, H {out['h'][-1]:.2e}",
                file=sys.stderr,
            )
        cross.append((rel(tables["cpu"][0], tables["jax"][0]), rel(tables["cpu"][1], tables["jax"][1])))
        del tables
    return runs, cross


def local_errors(engs: dict, pb: Problem, e: int, cache: Path) -> dict:
    w32, h32 = np.load(cache / f"start{e}_w.npy"), np.load(cache / f"start{e}_h.npy")
    wl, hl = np.load(cache / f"local{e}_w.npy"), np.load(cache / f"local{e}_h.npy")
    res = {}
    for name in ("cpu", "local"):
        eng = engs[name]
        gw = engine_half(eng, "rows", w32, h32)
        gh = engine_half(eng, "cols", h32, wl.astype(np.float32))
        res[name] = {"rows": by_length(gw, wl, pb.rows.lengths()), "cols": by_length(gh, hl, pb.cols.lengths())}
    return res


def report(header: dict, m: dict, runs: dict, cross: list, local: dict) -> str:
    L = [
        f"# Engines against float64 on cnr-2000 at d={header['dim']}",
        "",
        f"- Command: `{header['command']}`",
        f"- Date: {header['date']}; machine: {header['machine']['cpu']}, {header['machine']['cores']} cores, "
        f"load {header['machine']['load_1min']} at start, {header['load_end']} at the end",
        f"- Data: `{header['data']}`" + (f" (first {header['max_nodes']} nodes)" if header["max_nodes"] else ""),
        f"- Hyper-parameters: {header['hparams']}",
        "- float64: tests/reference.py's CG trajectory from the same start tables "
        f"({np.mean(m['seconds']):.0f} s/epoch, load {m['load']}).  cpu: {header['engines']['cpu']}; "
        f"jax: {header['engines']['jax']}.",
        "- rel. loss = |L - L64| / L64 of the engine's own loss (in brackets: the float64 loss of its float32 "
        "tables); W, H = ||W - W64|| / ||W64||.",
        "",
        "| epoch | L64 | cpu rel. loss | jax rel. loss | cpu vs jax loss | cpu W / H | jax W / H | cpu vs jax W / H |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e, f64 in enumerate(m["losses"][: len(cross)]):
        c, j = runs["cpu"], runs["jax"]
        L.append(
            f"| {e + 1} | {f64:.10g} | {abs(c['loss'][e] - f64) / f64:.2e} "
            f"({abs(c['loss_f64_eval'][e] - f64) / f64:.2e}) | {abs(j['loss'][e] - f64) / f64:.2e} "
            f"({abs(j['loss_f64_eval'][e] - f64) / f64:.2e}) | {abs(c['loss'][e] - j['loss'][e]) / j['loss'][e]:.2e} "
            f"| {c['w'][e]:.2e} / {c['h'][e]:.2e} | {j['w'][e]:.2e} / {j['h'][e]:.2e} "
            f"| {cross[e][0]:.2e} / {cross[e][1]:.2e} |"
        )
    if local:
        L += [
            "",
            "## Local errors: one half-step from float32 copies of the float64 tables",
            "",
            "||x - x64|| / ||x64|| over all rows and by row length (stored entries); 'local' is LocalEngine "
            "(the jax half-step on one device).",
            "",
            "| epoch | engine | side | all | "
            + " | ".join(f"len {b}" for b in ("1-10", "11-100", "101-1000", ">1000"))
            + " |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e, per in local.items():
            for name, sides in per.items():
                for side, d in sides.items():
                    bins = [d.get(k) for k in ("1-10", "11-100", "101-1000", "1001-max")]
                    cells = " | ".join("-" if v is None else f"{v:.2e}" for v in bins)
                    L.append(f"| {e} | {name} | {side} | {d['all']:.2e} | {cells} |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_data_arg(p)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--local-epochs", default="1,3", help="epochs whose local half-step errors to measure")
    p.add_argument("--max-nodes", type=int, default=0, help="the subgraph of the first N nodes")
    p.add_argument("--jax-devices", type=int, default=0, help="emulated CPU devices for jax (0: one per core, <= 8)")
    p.add_argument("--cache", default="/tmp/alsx-f64-cache", help="folder of the float64 trajectory")
    p.add_argument("--out-prefix", default="")
    a = p.parse_args(argv)
    C.use_data(a)
    devices = a.jax_devices or min(os.cpu_count() or 1, 8)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"  # before jax is imported
    local = [int(x) for x in a.local_epochs.split(",") if x]
    pb = Problem(a.dim, a.max_nodes)
    from alsx.core.state import init_state

    st0 = init_state(default_hparams()["seed"], pb.rows.n_rows, pb.rows.n_cols, pb.hp, False)  # every engine's start
    w0, h0 = np.asarray(st0.w, np.float32), np.asarray(st0.h, np.float32)
    cache = Path(a.cache) / f"d{a.dim}_n{a.max_nodes or 'all'}"
    header = {
        "command": C.command_line(),
        "date": C.now(),
        "machine": machine(),
        "dim": a.dim,
        "data": os.path.relpath(C.data_file(FILE), C.ROOT),
        "max_nodes": a.max_nodes,
        "hparams": {k: getattr(pb.hp, k) for k in ("reg", "unobserved_weight", "nu", "cg_steps", "dtype")},
    }
    m = reference_run(pb, w0, h0, a.epochs, local, cache)
    engs = engines(pb)
    header["engines"] = {k: f"{type(v).__name__} ({v.describe()})" for k, v in engs.items()}
    runs, cross = trajectories(engs, pb, w0, h0, m, cache, a.epochs)
    loc = {e: local_errors(engs, pb, e, cache) for e in local}
    header["load_end"] = C.loadavg()
    prefix = out_prefix(a.out_prefix or f"results_conformance_f64_d{a.dim}")
    with open(prefix.with_suffix(".jsonl"), "w") as f:
        for rec in (
            dict(header, kind="header"),
            dict(m, kind="float64"),
            *(dict(r, kind="run", engine=k) for k, r in runs.items()),
        ):
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"kind": "cross", "w_h": cross}) + "\n")
        f.write(json.dumps({"kind": "local", "errors": {str(k): v for k, v in loc.items()}}) + "\n")
    prefix.with_suffix(".md").write_text(report(header, m, runs, cross, loc))
    print(f"wrote {prefix.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
