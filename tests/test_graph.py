"""The explicit factor graph ``FactorGraph.graph(branches=k)`` and its drawing."""

from collections import Counter

import networkx as nx
import numpy as np
import pytest

from layers import create_factor_graph

TEMPLATES = [(3,), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 2), ("Regression", 0.01)]
BATCH = 5


@pytest.fixture(scope="module")
def fg():
    return create_factor_graph(TEMPLATES, batch_size=BATCH, seed=0)


def expected_counts(k):
    """Hand count for (3,) Linear 4, LeakyReLU, Linear 2, Regression with k training branches.

    Shared: W0, c0, W2, c2 (4 variables) and their 4 prior factors.
    Each training branch: x, h0, h1, h2, y (5 variables) and 4 layer factors.
    Predictive branch: x, h0, h1, h2, h3 (5 variables) and 4 layer factors.
    Edges per branch: 4 input + 4 output + 2 Linear layers x (W, c) = 12; plus 4 prior edges.
    """
    return {
        "variable": 4 + 5 * k + 5,
        "factor": 4 + 4 * k + 4,
        "edges": 4 + 12 * (k + 1),
        "target": k,
        "hidden": 3 * k + 4,
        "input": k + 1,
    }


@pytest.mark.parametrize("k", [0, 1, 2, BATCH])
def test_node_and_edge_counts(fg, k):
    G = fg.graph(branches=k)
    want = expected_counts(k)
    kinds = Counter(d["kind"] for _, d in G.nodes(data=True))
    assert kinds == {"variable": want["variable"], "factor": want["factor"]}
    assert G.number_of_edges() == want["edges"]
    roles = Counter(d["role"] for _, d in G.nodes(data=True) if d["kind"] == "variable")
    assert roles == Counter(W=2, c=2, input=want["input"], hidden=want["hidden"], target=want["target"])
    froles = Counter(d["role"] for _, d in G.nodes(data=True) if d["kind"] == "factor")
    assert froles == {"prior": 4, "Linear": 2 * (k + 1), "LeakyReLU": k + 1, "Regression": k + 1}
    interfaces = Counter(d["interface"] for _, _, d in G.edges(data=True))
    assert interfaces == {"prior": 4, "input": 4 * (k + 1), "output": 4 * (k + 1), "weight": 2 * (k + 1),
                          "bias": 2 * (k + 1)}


def test_default_branches_is_batch_size(fg):
    assert fg.graph().number_of_nodes() == fg.graph(BATCH).number_of_nodes()
    assert {d["branch"] for _, d in fg.graph().nodes(data=True)} == set(range(BATCH)) | {"pred", None}


def test_factor_nodes_have_layer_and_contracted_into(fg):
    G = fg.graph(branches=2)
    for n, d in G.nodes(data=True):
        if d["kind"] == "factor":
            assert isinstance(d["layer"], int) and 0 <= d["layer"] < len(fg.layers), n
            assert isinstance(d["contracted_into"], str) and str(d["layer"]) in d["contracted_into"], n
            assert fg.layers[d["layer"]].kind in d["contracted_into"], n
    for b in (0, 1, "pred"):
        for l, layer in enumerate(fg.layers):
            assert G.nodes[f"{layer.kind}{l}[{b}]"]["layer"] == l


def test_node_shapes_match_layer_shapes(fg):
    G = fg.graph(branches=2)
    for b in (0, 1, "pred"):
        assert G.nodes[f"x[{b}]"]["shape"] == (3,)
        for l, layer in enumerate(fg.layers):
            assert G.nodes[f"{layer.kind}{l}[{b}]"]["shape"] == layer.output_shape_
            out = f"y[{b}]" if (layer.is_signal and b != "pred") else f"h{l}[{b}]"
            assert G.nodes[out]["shape"] == layer.output_shape_
            assert layer.input_shape == (G.nodes[f"x[{b}]"]["shape"] if l == 0 else fg.layers[l - 1].output_shape_)
    for l in (0, 2):
        for name in ("W", "c"):
            want = fg.layers[l].params[name].shape
            assert G.nodes[f"{name}{l}"]["shape"] == G.nodes[f"prior {name}{l}"]["shape"] == want
    assert G.nodes["W0"]["shape"] == (3, 4) and G.nodes["c2"]["shape"] == (2,)


def test_weights_connect_to_every_branch_factor(fg):
    k = 3
    G = fg.graph(branches=k)
    for l in (0, 2):
        for name, iface in (("W", "weight"), ("c", "bias")):
            var = f"{name}{l}"
            factors = {f"Linear{l}[{b}]" for b in list(range(k)) + ["pred"]}
            assert set(G.neighbors(var)) == factors | {f"prior {var}"}
            for f in factors:
                assert G.edges[var, f]["interface"] == iface
            assert G.nodes[var]["branch"] is None


def test_graph_is_bipartite_between_variables_and_factors(fg):
    G = fg.graph(branches=2)
    for u, v in G.edges():
        assert {G.nodes[u]["kind"], G.nodes[v]["kind"]} == {"variable", "factor"}, (u, v)
    assert nx.is_bipartite(G) and nx.is_connected(G)


def test_branch_chain_structure(fg):
    G = fg.graph(branches=1)
    chain = ["x[0]", "Linear0[0]", "h0[0]", "LeakyReLU1[0]", "h1[0]", "Linear2[0]", "h2[0]", "Regression3[0]",
             "y[0]"]
    for a, b in zip(chain, chain[1:]):
        assert G.has_edge(a, b)
    assert G.nodes["x[0]"]["observed"] and G.nodes["y[0]"]["observed"]
    assert G.degree("y[0]") == 1 and G.degree("h3[pred]") == 1


def test_zero_branches_gives_only_the_predictive_branch(fg):
    G = fg.graph(branches=0)
    branches = {d["branch"] for _, d in G.nodes(data=True)}
    assert branches == {"pred", None}
    assert not any(n.startswith("y[") for n in G.nodes)
    assert "h3[pred]" in G and "Regression3[pred]" in G


@pytest.mark.parametrize("k", [BATCH + 1, -1])
def test_branches_out_of_range(fg, k):
    with pytest.raises(ValueError, match="branches"):
        fg.graph(branches=k)
    with pytest.raises(ValueError, match="branches"):
        fg.draw("unused.png", branches=k)


def test_draw_writes_png(fg, tmp_path):
    path = tmp_path / "g.png"
    fg.draw(path)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_for_flatten_network():
    fg = create_factor_graph([(2, 2, 1), ("Flatten",), ("Linear", 3), ("Regression", 0.1)], batch_size=2)
    G = fg.graph(branches=1)
    assert G.nodes["x[0]"]["shape"] == (2, 2, 1) and G.nodes["Flatten0[0]"]["shape"] == (4,)
    assert G.nodes["W1"]["shape"] == (4, 3)
    assert sorted(n for n, d in G.nodes(data=True) if d["branch"] is None) == ["W1", "c1", "prior W1", "prior c1"]
    assert np.prod(G.nodes["x[pred]"]["shape"]) == G.nodes["h0[pred]"]["shape"][0]
