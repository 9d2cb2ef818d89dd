"""Forward, backward and predict traversals derived from the explicit factor graph.

A :class:`Schedule` is a value: a tuple of :class:`Step` (which factor node sends, toward which
interface), printable, comparable and usable from a script.  The builders here read only the
networkx graph produced by ``FactorGraph.graph()`` (node attributes ``kind`` in {"variable",
"factor"}, ``branch``, ``layer``; edge attribute ``interface``), never the factor types.

* forward: topological order of the branch's factors, edges oriented input -> factor -> output;
* backward: the reverse of forward (the training signal first);
* predict: the forward order of the predictive branch.
"""

from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class Step:
    """One message computation: factor ``node`` (layer index ``layer``) sends toward ``target``."""

    layer: int
    node: str
    target: str  # "output" or "input"

    def __str__(self):
        return f"{self.node} -> {self.target}"


@dataclass(frozen=True)
class Schedule:
    """An ordered tuple of steps with a name; ``str()`` prints numbered steps."""

    name: str
    steps: tuple

    def __iter__(self):
        return iter(self.steps)

    def __len__(self):
        return len(self.steps)

    def layers(self):
        """The layer indices in order."""
        return tuple(s.layer for s in self.steps)

    def __str__(self):
        lines = [f"Schedule {self.name!r} ({len(self.steps)} steps)"]
        lines += [f"  {k + 1:3d}. {s}" for k, s in enumerate(self.steps)]
        return "\n".join(lines)


def _branch_dag(G, branch):
    """Directed graph of one branch's factors and hidden variables, oriented along data flow."""
    D = nx.DiGraph()
    for u, v, data in G.edges(data=True):
        a, b = (u, v) if G.nodes[u]["kind"] == "factor" else (v, u)
        if G.nodes[a].get("branch") != branch or G.nodes[b].get("branch") != branch:
            continue
        iface = data["interface"]
        if iface == "input":
            D.add_edge(b, a)
        elif iface == "output":
            D.add_edge(a, b)
    return D


def _factor_order(G, branch):
    D = _branch_dag(G, branch)
    order = [n for n in nx.lexicographical_topological_sort(D) if G.nodes[n]["kind"] == "factor"]
    if not order:
        raise ValueError(f"branch {branch!r} has no factors in the graph")
    return order


def forward_schedule(G, branch=0):
    """Forward traversal of a training branch (input to training signal)."""
    order = _factor_order(G, branch)
    return Schedule("forward", tuple(Step(G.nodes[n]["layer"], n, "output") for n in order))


def backward_schedule(G, branch=0):
    """Backward traversal of a training branch (training signal to input)."""
    order = _factor_order(G, branch)[::-1]
    return Schedule("backward", tuple(Step(G.nodes[n]["layer"], n, "input") for n in order))


def predict_schedule(G):
    """Forward traversal of the predictive branch."""
    order = _factor_order(G, "pred")
    return Schedule("predict", tuple(Step(G.nodes[n]["layer"], n, "output") for n in order))
