"""WebGraph link-prediction data sets: Common Crawl builds, synthetic graphs, on-disk format."""

from alsx.webgraph.build import CCInputs, build_webgraph
from alsx.webgraph.dataset import WebGraphDataset, open_dataset
from alsx.webgraph.synthetic import SynthSpec, synth_webgraph
from alsx.webgraph.variant import Variant

__all__ = ["CCInputs", "SynthSpec", "Variant", "WebGraphDataset", "build_webgraph", "open_dataset", "synth_webgraph"]
