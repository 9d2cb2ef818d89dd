"""The explicit factor graph of a network, at the granularity of tensors.

Nodes (attribute ``kind`` = "variable" or "factor"):

* weight and bias variables ``W{l}``, ``c{l}`` of each weighted layer ``l`` (``branch=None``) and their
  prior factors ``prior W{l}``, ``prior c{l}``;
* per branch ``b`` (training example slots 0..k-1 and the predictive branch ``"pred"``): the input
  ``x[b]``, the hidden variables ``h{l}[b]`` (output of layer ``l``), the factor ``{Kind}{l}[b]`` of
  every layer, and for training branches the observed target ``y[b]`` (the likelihood factor is the
  training-signal layer); the predictive branch ends in the predictive output ``h{L}[pred]``.

Each node carries ``shape``; each factor node carries ``layer`` (its index) and ``contracted_into``,
the per-layer factor object it is contracted into.  Edges carry ``interface`` (the factor's interface
the variable is attached to: "input", "output", "weight", "bias", "prior").
"""

import networkx as nx


def build_graph(layers, input_shape, branches):
    """Return the networkx graph of ``layers`` for the training ``branches`` plus the predictive one."""
    G = nx.Graph()
    for l, layer in enumerate(layers):
        for pname, slots in getattr(layer, "params", {}).items():
            var = f"{pname}{l}"
            G.add_node(var, kind="variable", role=pname, shape=tuple(slots.shape), branch=None)
            G.add_node(f"prior {var}", kind="factor", role="prior", shape=tuple(slots.shape), branch=None,
                       layer=l, contracted_into=f"layer {l} ({layer.kind}) batch prior")
            G.add_edge(f"prior {var}", var, interface="prior")
    for b in list(branches) + ["pred"]:
        prev = f"x[{b}]"
        G.add_node(prev, kind="variable", role="input", shape=tuple(input_shape), branch=b, observed=True)
        for l, layer in enumerate(layers):
            f = f"{layer.kind}{l}[{b}]"
            G.add_node(f, kind="factor", role=layer.kind, shape=tuple(layer.output_shape_), branch=b, layer=l,
                       contracted_into=f"layer {l} ({layer.kind})")
            G.add_edge(prev, f, interface="input")
            for pname in getattr(layer, "params", {}):
                G.add_edge(f"{pname}{l}", f, interface="weight" if pname == "W" else "bias")
            if layer.is_signal and b != "pred":
                out = f"y[{b}]"
                G.add_node(out, kind="variable", role="target", shape=tuple(layer.output_shape_), branch=b,
                           observed=True)
            else:
                out = f"h{l}[{b}]"
                G.add_node(out, kind="variable", role="hidden", shape=tuple(layer.output_shape_), branch=b)
            G.add_edge(f, out, interface="output")
            prev = out
    return G


def draw_graph(G, path):
    """Draw ``G`` to ``path`` (PNG/SVG/PDF) with matplotlib: variables as circles, factors as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    branches = sorted({d["branch"] for _, d in G.nodes(data=True) if d["branch"] is not None}, key=str)
    pos = {}
    col = {b: k for k, b in enumerate(branches)}
    depth = {}
    for n, d in G.nodes(data=True):
        if d["branch"] is None:
            continue
        if n.startswith("x["):
            depth[n] = 0
        elif d["kind"] == "factor":
            depth[n] = 2 * d["layer"] + 1
        else:
            depth[n] = 2 * int(n[1:n.index("[")]) + 2 if n.startswith("h") else 2 * len(branches) + 99
    max_depth = max((v for v in depth.values() if v < 99), default=1) + 1
    for n, d in G.nodes(data=True):
        if d["branch"] is not None:
            dep = depth[n] if depth[n] < 99 else max_depth
            pos[n] = (dep, -3.0 * col[d["branch"]])
    for n, d in G.nodes(data=True):
        if d["branch"] is None:
            l = int("".join(ch for ch in n.split()[-1] if ch.isdigit()))
            shift = 0.4 if "c" in n.split()[-1] else -0.4
            pos[n] = (2 * l + 1 + shift, 3.0 + (1.5 if n.startswith("prior") else 0))
    fig_w = max(6, 1.2 * max_depth)
    fig, ax = plt.subplots(figsize=(fig_w, 2 + 1.6 * len(branches)))
    var = [n for n, d in G.nodes(data=True) if d["kind"] == "variable"]
    fac = [n for n, d in G.nodes(data=True) if d["kind"] == "factor"]
    nx.draw_networkx_edges(G, pos, ax=ax, alpha=0.4)
    nx.draw_networkx_nodes(G, pos, nodelist=var, node_shape="o", node_color="#cfe2ff", ax=ax, node_size=500)
    nx.draw_networkx_nodes(G, pos, nodelist=fac, node_shape="s", node_color="#ffd8a8", ax=ax, node_size=500)
    nx.draw_networkx_labels(G, pos, font_size=6, ax=ax)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
