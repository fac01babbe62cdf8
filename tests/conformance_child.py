"""Child process of the engine conformance suite: the ShardedEngine on N emulated CPU devices.

Usage: python tests/conformance_child.py '{"devices": N, "out": "file.npz", "epochs": E}'

XLA_FLAGS must be set before jax is imported, hence a process per device count; one child
runs every input of ``conformance_inputs.problems()`` and saves, per input, the loss parts
after each epoch, whether the tables were finite after each epoch, and the final tables
(external row order).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cfg['devices']}"
    import jax

    import conformance_inputs as ci
    from alsx.core.sharded import ShardedEngine
    from alsx.core.sharding import make_mesh

    assert len(jax.devices()) == cfg["devices"], jax.devices()
    out = {}
    for p in ci.problems():
        eng = ShardedEngine(p.rows, p.cols, p.hp, ci.PACKING, mesh=make_mesh(jax.devices()))
        st = eng.init_state(ci.SEED)
        losses, finite = [], []
        for _ in range(cfg["epochs"]):
            st = eng.epoch(st)
            loss = eng.loss(st)
            losses.append([loss.observed, loss.unobserved, loss.regularisation])
            finite.append(bool(jax.numpy.isfinite(st.w).all() & jax.numpy.isfinite(st.h).all()))
        out[f"{p.name}_loss"] = np.array(losses)
        out[f"{p.name}_finite"] = np.array(finite)
        out[f"{p.name}_w"], out[f"{p.name}_h"] = eng.to_numpy(st)
    np.savez(cfg["out"], **out)
