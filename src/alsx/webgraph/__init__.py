"""WebGraph link-prediction data sets: Common Crawl builds, synthetic graphs, on-disk format.

The names below load on first use (PEP 562 ``__getattr__``), so ``alsx.webgraph.cli`` (the
``alsx`` command's parser) does not import the builders and their readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alsx.webgraph.build import CCInputs, build_webgraph
    from alsx.webgraph.dataset import WebGraphDataset, open_dataset
    from alsx.webgraph.synthetic import SynthSpec, synth_webgraph
    from alsx.webgraph.variant import Variant

__all__ = ["CCInputs", "SynthSpec", "Variant", "WebGraphDataset", "build_webgraph", "open_dataset", "synth_webgraph"]


def __getattr__(name: str):
    if name in ("CCInputs", "build_webgraph"):
        from alsx.webgraph import build as module
    elif name in ("WebGraphDataset", "open_dataset"):
        from alsx.webgraph import dataset as module
    elif name in ("SynthSpec", "synth_webgraph"):
        from alsx.webgraph import synthetic as module
    elif name == "Variant":
        from alsx.webgraph import variant as module
    else:
        raise AttributeError(f"module 'alsx.webgraph' has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
