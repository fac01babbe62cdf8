"""Node vocabularies of a WebGraph build: TLD filters, growing node sets, URLs numbered as they appear."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def normalize_tlds(tld: str | Sequence[str] | None) -> list[str] | None:
    """['de', 'in'] from 'de', '.DE', ['de', '.in'], ...; None means no TLD filter."""
    if tld is None:
        return None
    items = [tld] if isinstance(tld, str) else list(tld)
    out = sorted({t.strip().lstrip(".").lower() for t in items if t.strip()})
    if not out:
        raise ValueError("tld filter is empty; pass None to keep every TLD")
    return out


class GrowBool:
    """A bool array indexed by node id that grows to fit the largest id seen."""

    def __init__(self) -> None:
        self.a = np.zeros(1024, dtype=bool)
        self.size = 0  # 1 + largest id set so far

    def ensure(self, n: int) -> None:
        if n > len(self.a):
            b = np.zeros(max(n, 2 * len(self.a)), dtype=bool)
            b[: len(self.a)] = self.a
            self.a = b
        self.size = max(self.size, n)

    def view(self) -> np.ndarray:
        return self.a[: self.size]


_URL_HOST = r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#]*@)?(?P<host>[^/:?#]*)"


def url_tlds(urls):
    """pyarrow string array of TLDs (last host label, lower case) of URLs or bare host names."""
    host = pc.struct_field(pc.extract_regex(urls, _URL_HOST), [0])
    host = pc.utf8_rtrim(pc.utf8_lower(host), characters=".")
    return pc.struct_field(pc.extract_regex(host, r"(?P<t>[^.]*)$"), [0])


def reversed_host_tlds(names):
    """pyarrow string array of TLDs of Common Crawl reversed host names (``com.example.www`` -> ``com``)."""
    return pc.struct_field(pc.extract_regex(pc.utf8_lower(names), r"^(?P<t>[^.]*)"), [0])


class UrlVocab:
    """URL -> id in order of first appearance; remembers which URLs pass the TLD filter."""

    def __init__(self, tlds: list[str] | None) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.keep = GrowBool()
        self.tlds = tlds

    def encode(self, arr) -> np.ndarray:
        """int64 [n] ids of a pyarrow string array; new URLs get new ids."""
        enc = (
            pc.dictionary_encode(arr).combine_chunks()
            if isinstance(arr, pa.ChunkedArray)
            else pc.dictionary_encode(arr)
        )
        uniq = enc.dictionary.to_pylist()
        start = len(self.names)
        local = np.empty(len(uniq), dtype=np.int64)
        for i, u in enumerate(uniq):  # one dict lookup per distinct URL of the chunk
            j = self.ids.get(u)
            if j is None:
                j = self.ids[u] = len(self.names)
                self.names.append(u)
            local[i] = j
        n_new = len(self.names) - start
        self.keep.ensure(len(self.names))
        if n_new:
            new_names = pa.array(self.names[start:], type=pa.string())
            ok = (
                np.ones(n_new, dtype=bool)
                if self.tlds is None
                else pc.is_in(url_tlds(new_names), value_set=pa.array(self.tlds)).to_numpy(zero_copy_only=False)
            )
            self.keep.a[start : start + n_new] = ok
        return local[enc.indices.to_numpy(zero_copy_only=False)]
