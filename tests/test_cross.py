"""The cross-attention rows of a batch (``engine/cross.py``): host buffers against the graphs, on real encoder
outputs of a tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from nmtserve.engine import Engine
from nmtserve.engine.cross import GraphCross, HostCross
from nmtserve.engine.model_dir import ENCODER
from nmtserve.export.testing import tiny_export


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32"), threads=1)


def _encode(engine: Engine, lengths: list[int], rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    source_ids = np.zeros((len(lengths), max(lengths)), np.int64)  # pad 0
    for i, n in enumerate(lengths):
        source_ids[i, : n - 1] = rng.integers(4, 60, n - 1)
        source_ids[i, n - 1] = engine.info.eos_id
    return engine.runtime.run(ENCODER, {"source_ids": source_ids}), source_ids != engine.info.pad_id


def _arrays(cross: GraphCross | HostCross) -> dict[str, np.ndarray]:
    feeds = cross.feeds()
    return {name: np.array(value.numpy() if hasattr(value, "numpy") else value) for name, value in feeds.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_host_rows_equal_the_graphs_under_random_joins_and_leaves(engine: Engine, seed: int) -> None:
    """Joins of shorter and longer sources, leaves that fill a hole with the last row or shift the rows after it,
    and the width following the longest live source: the fed tensors are the graphs' bit for bit."""
    rng = np.random.default_rng(seed)
    host, graph = HostCross(engine.runtime), GraphCross(engine.runtime)
    live: list[int] = []
    source_len: dict[int, int] = {}
    serial, relayouts = 0, 0
    for _ in range(40):
        if not live or rng.random() < 0.5:
            lengths = [int(n) for n in rng.integers(2, 24, int(rng.integers(1, 4)))]
            encoded, mask = _encode(engine, lengths, rng)
            serials = list(range(serial, serial + len(lengths)))
            serial += len(lengths)
            host.append(serials, encoded, mask)
            graph.append(serials, encoded, mask)
            live += serials
            source_len.update({s: lengths[i] for i, s in enumerate(serials)})
        if len(live) > 1 and rng.random() < 0.6:
            hole = int(rng.integers(len(live)))
            if rng.random() < 0.5:
                last = live.pop()  # the last sentence takes the hole (batch.fill_holes)
                if hole < len(live):
                    live[hole] = last
            else:
                del live[hole]  # the rows after it shift down
        width = max(source_len[s] for s in live)
        before = host.feeds()["cross_keys.0"]
        host.align(list(live), width)
        graph.align(list(live), width)
        relayouts += not np.shares_memory(before.numpy(), host.feeds()["cross_keys.0"].numpy())
        from_host, from_graph = _arrays(host), _arrays(graph)
        assert from_host.keys() == from_graph.keys()
        for name in from_graph:
            np.testing.assert_array_equal(from_host[name], from_graph[name], err_msg=name)
        assert from_host["source_mask"].shape[1] == width
    assert relayouts < 40  # most steps reuse the buffers


def test_a_leave_copies_only_the_row_that_moved(engine: Engine) -> None:
    """With the width unchanged, the rows that stay keep their memory and contents; the moved row is rewritten."""
    rng = np.random.default_rng(3)
    cross = HostCross(engine.runtime)
    encoded, mask = _encode(engine, [9, 9, 5, 7], rng)
    cross.append([0, 1, 2, 3], encoded, mask)
    keys = cross.feeds()["cross_keys.0"].numpy()
    row0, row3 = keys[0].copy(), keys[3].copy()
    cross.align([0, 3, 2], 9)  # sentence 1 left, the last took its place
    after = cross.feeds()["cross_keys.0"].numpy()
    assert np.shares_memory(keys, after)  # same buffer, no relayout
    np.testing.assert_array_equal(after[0], row0)
    np.testing.assert_array_equal(after[1], row3)
    assert after.shape[0] == 3
