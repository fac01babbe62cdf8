"""WebGraph link-prediction data sets: Common Crawl builds, synthetic graphs, on-disk format."""

from alsx.webgraph.build import CCInputs
from alsx.webgraph.build import build_webgraph
from alsx.webgraph.dataset import WebGraphDataset
from alsx.webgraph.dataset import open_dataset
from alsx.webgraph.synthetic import SynthSpec
from alsx.webgraph.synthetic import synth_webgraph
from alsx.webgraph.variant import Variant

__all__ = [
    "CCInputs",
    "SynthSpec",
    "Variant",
    "WebGraphDataset",
    "build_webgraph",
    "open_dataset",
    "synth_webgraph",
]
