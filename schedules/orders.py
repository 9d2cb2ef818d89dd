"""Within-batch orders: in which order the examples of a batch are visited in one iteration.

An order is a value with ``permutation(n, rng) -> int array``; ``train_batch`` draws one
permutation per call and uses it for every iteration of that visit (SPEC 6.2).  An order may also set
``chunk_size`` and ``damping`` (:class:`Chunked`): the examples of a chunk then all compute their
messages from the same weight marginals, and the chunk's (damped) messages replace the old ones at once.

:class:`Parallel` goes further: a chunk is one *site* of the weights (its joint message is stored, not
the per-example ones) and is computed layer by layer with matrix x matrix products.  :class:`Chains`
runs ``k`` sequential chains on disjoint parts of the batch, each with its own marginal, merged after
every sweep (thesis footnote 17).  :class:`ByEpoch` (for the Trainer) changes the order with the epoch.
"""

from dataclasses import dataclass

import numpy as np


def is_order(obj):
    """Whether ``obj`` is a within-batch order (has ``permutation(n, rng)``); :class:`ByEpoch` is not one."""
    return callable(getattr(obj, "permutation", None))


@dataclass(frozen=True)
class Shuffled:
    """A random permutation from the graph's generator (the thesis schedule)."""

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        return "Shuffled()"


@dataclass(frozen=True)
class Fixed:
    """Examples in their stored order 0, 1, ..., n-1."""

    def permutation(self, n, rng):
        return np.arange(n)

    def __str__(self):
        return "Fixed()"


@dataclass(frozen=True)
class Chunked:
    """Parallel message passing within a batch: chunks of ``chunk_size`` examples (in a shuffled order)
    send their messages from the same marginals; each new message is damped toward the example's previous
    one, ``old + damping (new - old)``, and the chunk's messages replace the old ones together (no double
    counting, as in parallel EP).  ``Chunked(1)`` is the sequential thesis schedule; ``Chunked(B)`` is fully
    parallel.  The weights' marginals change once per chunk.
    """

    chunk_size: int
    damping: float = 1.0

    def __post_init__(self):
        _check_chunk(self.chunk_size, self.damping)

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        return f"Chunked({self.chunk_size}, damping={self.damping})"


def _check_chunk(chunk_size, damping):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")


@dataclass(frozen=True)
class Parallel:
    """Batched (GEMM-shaped) message passing: the batch is cut into chunks of ``chunk_size`` examples
    (one shuffled order per ``train_batch`` call, kept for all its sweeps); a chunk's examples pass
    forward and backward together, layer by layer, as matrices, from the same weight marginals.

    Each chunk is one site of the weights: the product of its examples' messages is stored as one
    message (in slot ``k`` for the ``k``-th chunk) and replaces the chunk's previous one, damped
    ``old + damping (new - old)`` (parallel EP over chunks).  Cavities of the first layer and the biases
    are taken with respect to the chunk's message.

    ``exact=False`` computes the chunk's weight messages with matrix products, expanding each message's
    denominator ``1 / (1 - e)`` in its own term's share ``e`` of the output's uncertainty to order
    ``expansion``: 0 (the default) gives 1 (every per-example message keeps its mean and loses the
    fraction ``e`` of its precision; a third of the matrix products of order 1), 1 gives ``1 + e``
    (error ``e^2 / (1 - e)``), see :func:`factorgraph.equations.s2_backward_gemm`.  On Fashion-MNIST
    (n = 5120, MLP, chunks of 32, side by side) both orders reached the same accuracy, NLL and ECE to 0.003.
    ``exact=True`` forms the per-example messages (memory ``chunk_size x weights``) and multiplies them.
    ``Parallel(1, exact=True)`` gives the same marginals as the sequential thesis schedule.

    ``damping`` is one number for every weighted layer or a sequence with one per weighted layer (the
    layers that own weights, Linear and Conv, in graph order), e.g. ``Parallel(64, (0.125, 0.35, 0.35))``
    damps the first layer's chunk sites more than the hidden ones.  On Fashion-MNIST's MLP the first
    layer is where chunks of 64 go unstable: damping it alone to 0.125 let the other layers take 0.35.

    ``max_step`` (a trust region, off by default): a chunk may move each weight's marginal mean by at most
    ``max_step`` standard deviations of that marginal before the chunk; a weight whose (damped) step would
    go further gets the natural-parameter step scaled down to exactly that distance (counted as guard
    ``parallel_step_limit``).  Fixed points are unchanged (there the steps are zero); it stops the runaway
    in which large chunks push many weights at once past what their shared outputs need, and the larger
    means then produce still larger messages.

    What trained on Fashion-MNIST (n = 5120, batch 320, ``Staircase(2)``, README "Schedules"): chunks of 32 at
    damping 0.5 with ``max_step=1.0`` on scalar-normalised inputs (0.25 from epoch 3 on, ``ByEpoch``, the best
    there); chunks of 64 or 128 at 0.25 with ``max_step=1.0`` on ZCA-whitened inputs
    (:class:`factorgraph.datasets.Whitening`); and for the MLP one chunk per batch, ``Parallel(320, 0.2,
    max_step=0.3)``, on inputs whitened with ``eps=1`` (with ``max_step=1.0`` it diverged; LeNet-5 diverged
    with one chunk per batch in every setting tried).
    """

    chunk_size: int
    damping: float | tuple = 1.0
    exact: bool = False
    max_step: float | None = None
    expansion: int = 0

    def __post_init__(self):
        if isinstance(self.damping, (tuple, list)):
            if not self.damping:
                raise ValueError("damping must be a number or a non-empty sequence of numbers, got ()")
            for d in self.damping:
                _check_chunk(self.chunk_size, d)
            object.__setattr__(self, "damping", tuple(float(d) for d in self.damping))
        else:
            _check_chunk(self.chunk_size, self.damping)
        if not isinstance(self.exact, bool):
            raise ValueError(f"exact must be True or False, got {self.exact!r}")
        if self.max_step is not None and (isinstance(self.max_step, bool) or not isinstance(self.max_step, (int, float))
                                          or not 0 < self.max_step < float("inf")):
            raise ValueError(f"max_step must be a positive number of standard deviations or None, got {self.max_step!r}")
        if isinstance(self.expansion, bool) or self.expansion not in (0, 1):
            raise ValueError(f"expansion must be 0 or 1 (the order of the GEMM weight messages), got {self.expansion!r}")

    @property
    def messages(self):
        """What ``backward_chunk`` gets as ``expansion``: ``None`` (exact) or the GEMM order."""
        return None if self.exact else self.expansion

    def layer_damping(self, weighted):
        """The damping of each of ``weighted`` weighted layers (a tuple); ``ValueError`` where a sequence
        of dampings has another length."""
        if not isinstance(self.damping, tuple):
            return (self.damping,) * weighted
        if len(self.damping) != weighted:
            raise ValueError(f"{self} has {len(self.damping)} dampings but the graph has {weighted} weighted "
                             f"layers (Linear, Conv): give one number, or one per weighted layer")
        return self.damping

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        extra = ((", exact=True" if self.exact else "") + (f", max_step={self.max_step}" if self.max_step else "")
                 + (f", expansion={self.expansion}" if self.expansion != 0 else ""))
        return f"Parallel({self.chunk_size}, damping={self.damping}{extra})"


@dataclass(frozen=True)
class Chains:
    """``k`` chains (thesis footnote 17): the batch's shuffled examples are dealt into ``k`` parts; each
    part is swept sequentially with its own copy of the weight marginals, which sees its own updates at
    once and the other chains' only when the marginals are merged (recomputed exactly) after the sweep.
    Step ``t`` of all chains can run at the same time; ``Chains(1)`` is the thesis schedule.  Like any
    parallel update the chains can oscillate (on correlated inputs they do): ``damping`` damps every new
    per-example message toward the example's previous one."""

    chains: int
    damping: float = 1.0

    def __post_init__(self):
        if isinstance(self.chains, bool) or not isinstance(self.chains, int) or self.chains < 1:
            raise ValueError(f"chains must be a positive integer, got {self.chains!r}")
        _check_chunk(1, self.damping)

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        return f"Chains({self.chains}, damping={self.damping})"


@dataclass(frozen=True)
class ByEpoch:
    """Within-batch orders that change with the epoch (for :class:`trainer.Trainer`): ``first`` from epoch 1,
    then each ``(epoch, order)`` of ``changes`` from that (1-based) epoch on, e.g. smaller steps once the
    weights have settled::

        ByEpoch(Parallel(32, 0.5, max_step=1.0), (3, Parallel(32, 0.25, max_step=1.0)))

    On Fashion-MNIST (MLP, n = 5120, Staircase(2), twelve seeds) this damping 0.5 -> 0.25 beat the sequential
    schedule's mean accuracy, NLL and ECE and was within 0.5 points of it with no worse NLL and ECE in 9 of 12
    seeds (damping 0.5 throughout: 7); smaller chunks late (``(3, Parallel(16, 0.5, max_step=1.0))``) also helped
    (``examples/results/schedules_mlp_n5120_staircase2.md``). On the full training set (60 000) and on LeNet-5 the
    same late damping was worse than 0.5 throughout: the best schedule depends on the model and data size.
    """

    first: object
    changes: tuple = ()

    def __init__(self, first, *changes):
        object.__setattr__(self, "first", first)
        object.__setattr__(self, "changes", tuple(changes))
        orders = [first]
        last = 1
        for change in self.changes:
            if not (isinstance(change, tuple) and len(change) == 2):
                raise ValueError(f"each change must be a pair (epoch, order), got {change!r}")
            epoch, order = change
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= last:
                raise ValueError(f"change epochs must be integers, increasing and > 1, got {epoch!r} after {last}")
            last = epoch
            orders.append(order)
        for order in orders:
            if not is_order(order):
                raise TypeError(f"ByEpoch takes within-batch orders (Shuffled, Parallel, ...), got {order!r}")

    @property
    def orders(self):
        """Every order it uses, in epoch order."""
        return (self.first,) + tuple(order for _, order in self.changes)

    def at(self, epoch):
        """The order of the (1-based) ``epoch``."""
        current = self.first
        for start, order in self.changes:
            if epoch >= start:
                current = order
        return current

    def __str__(self):
        return f"ByEpoch({self.first}" + "".join(f", from epoch {e}: {o}" for e, o in self.changes) + ")"


def parse_order(text):
    """A within-batch order (or :class:`ByEpoch`) from its Python expression, e.g. ``"Parallel(64, 0.25,
    max_step=1.0)"``: evaluated with the names of the orders only, no builtins (the command line and the
    example scripts take orders this way).  ``ValueError`` naming the expression where it does not parse,
    fails, or is not an order."""
    names = {c.__name__: c for c in (Shuffled, Fixed, Chunked, Parallel, Chains, ByEpoch)}
    try:
        order = eval(text, {"__builtins__": {}}, names)  # noqa: S307 - names of orders only
    except Exception as e:  # syntax errors, unknown names, bad arguments: one message
        raise ValueError(f"bad order {text!r}: {type(e).__name__}: {e}") from None
    if not (isinstance(order, ByEpoch) or is_order(order)):
        raise ValueError(f"{text!r} is not an order (Shuffled(), Parallel(64, 0.25), ...)")
    return order
