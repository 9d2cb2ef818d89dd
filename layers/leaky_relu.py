"""LeakyReLU layer ``z = max(a, 0) + slope * min(a, 0)`` (SPEC 5.4).

Keeps per example slot the forward message in and the latest backward message in (across iterations).
Training forward: marginal approximation of z, or moment matching while no backward message exists
yet (the first iteration after a batch reset).  Training backward: marginal approximation of a, then
``min_rho(MIN_PRECISION)``.  Prediction: moment matching.
"""

import numpy as np

from factorgraph import config, kernels
from factorgraph.backend import get_array_module
from factorgraph.equations import leaky_backward_marginal, leaky_forward_marginal, leaky_forward_moment_match
from factorgraph.factor import Factor
from factorgraph.gaussian import Gaussian, clamp_min_rho
from factorgraph.kernels import leaky_cpu


class LeakyReLU(Factor):
    kind = "LeakyReLU"
    accepts_constant_input = False
    supports_chunks = True
    cache_names = ("m_in", "m_back")
    activation_cache_names = ("m_back",)

    def __init__(self, slope=0.1):
        super().__init__()
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0 < slope < 1:
            raise ValueError(f"LeakyReLU slope must be a number in (0, 1), got {slope!r}")
        self.slope = float(slope)

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        if constant_input:
            raise ValueError("LeakyReLU cannot come before the first Linear layer (its input would be data)")
        super().build(input_shape, batch_size, dtype=dtype, rng=rng, constant_input=constant_input)
        shape = (batch_size,) + self.input_shape
        self.m_in = Gaussian.uniform(shape, dtype)
        self.m_back = Gaussian.uniform(shape, dtype)
        self._seen_back = np.zeros(batch_size, bool)  # per slot: has a backward message arrived?
        self._guards = kernels.GuardCounts(leaky_cpu.GUARD_NAMES)

    def flush_guards(self):
        self._guards.flush()

    def forward(self, m_in, i):
        return self._forward(m_in, i, bool(self._seen_back[i]))

    def _check_chunk(self, msg, idx):
        """A chunk's messages have one row of the layer's shape per slot (the chunk kernels index the flat
        caches unchecked); raised before any state changes."""
        want = (len(idx),) + self.m_in.shape[1:]
        if msg.shape != want:
            raise ValueError(f"LeakyReLU: a chunk of {len(idx)} slots needs messages of shape {want}, got "
                             f"{msg.shape}")

    def forward_chunk(self, m_in, idx, site):
        self._check_chunk(m_in, idx)
        seen = self._seen_back[idx]
        k = np.count_nonzero(seen)  # one pass (``all`` and ``any`` took two NumPy reductions per chunk)
        if k == len(seen) or k == 0:
            return self._forward(m_in, idx, bool(seen[0]))
        first, later = self._forward(m_in, idx, False), self._forward(m_in, idx, True)
        mask = m_in.xp.asarray(seen).reshape((-1,) + (1,) * (m_in.tau.ndim - 1))
        return Gaussian(m_in.xp.where(mask, later.tau, first.tau), m_in.xp.where(mask, later.rho, first.rho))

    def _forward(self, m_in, i, seen):
        """Forward of slot(s) ``i`` (an int or an index array with ``m_in`` stacked along axis 0)."""
        mod = kernels.module(m_in.tau, "leaky")
        if mod is not None and seen and self._chunk_kernel(i):
            return self._launch_slots(mod.leaky_fwd_marginal_slots, m_in, self.m_in, self.m_back, i)
        self.m_in[i] = m_in
        if mod is not None:
            if not seen:
                return self._launch(mod.leaky_fwd_moment_match, m_in.tau, m_in.rho)
            return self._launch(mod.leaky_fwd_marginal, m_in.tau, m_in.rho, self.m_back.tau[i], self.m_back.rho[i])
        if not seen:
            return leaky_forward_moment_match(m_in, self.slope)
        return leaky_forward_marginal(m_in, self.m_back[i], self.slope)

    def backward(self, m_out, i):
        out = self._backward(m_out, i)
        self._seen_back[i] = True
        return out

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        self._check_chunk(m_out, idx)
        out = self._backward(m_out, idx)
        self._seen_back[idx] = True
        return out

    def _backward(self, m_out, i):
        mod = kernels.module(m_out.tau, "leaky")
        if mod is not None and self._chunk_kernel(i):
            return self._launch_slots(mod.leaky_bwd_marginal_slots, m_out, self.m_back, self.m_in, i)
        self.m_back[i] = m_out
        if mod is not None:
            return self._launch(mod.leaky_bwd_marginal, self.m_in.tau[i], self.m_in.rho[i], m_out.tau, m_out.rho)
        msg = leaky_backward_marginal(self.m_in[i], m_out, self.slope)
        return clamp_min_rho(msg, config.MIN_PRECISION)

    def _launch(self, fn, *arrays, extra=()):
        """Run elementwise kernel ``fn(*flat inputs, *extra, slope, out_tau, out_rho, counts)`` over arrays of
        one shape; returns the output message in that shape."""
        xp = get_array_module(arrays[0])
        shape, dtype = arrays[0].shape, arrays[0].dtype
        # C-contiguous outputs, so the flat views below alias them (empty_like could keep a transposed
        # layout, and reshape would then copy)
        out = Gaussian(xp.empty(shape, dtype), xp.empty(shape, dtype))
        counts = self._guards.array(out.tau)
        flat = [xp.ascontiguousarray(v).reshape(-1) for v in arrays]
        fn(*flat, *extra, self.slope, out.tau.reshape(-1), out.rho.reshape(-1), counts)
        self._guards.after_call(out.tau)
        return out

    def _chunk_kernel(self, i):
        """Whether slots ``i`` go to the chunk kernels (``*_slots``): an index array of distinct slots in
        ``[0, batch_size)`` (a repeated slot would have its cache row written by several threads at once;
        other indices take the NumPy path, which reads them as NumPy does) and caches whose flat views
        alias them."""
        caches = (self.m_in.tau, self.m_in.rho, self.m_back.tau, self.m_back.rho)
        return (isinstance(i, np.ndarray) and i.ndim == 1 and i.dtype.kind in "iu"
                and all(c.flags.c_contiguous for c in caches)
                and leaky_cpu.distinct_rows(i, len(self._seen_back)))

    def _launch_slots(self, fn, fresh, store, other, rows):
        """Run chunk kernel ``fn`` (:meth:`_launch` with the flat caches and ``rows`` as extra arguments): the
        chunk's ``fresh`` messages (one row per slot in ``rows``) are stored in the slots' rows of the cache
        ``store`` and met with the slots' rows of the cache ``other`` inside the kernel (no gathered
        copies); returns the output message in ``fresh``'s shape."""
        caches = [v.reshape(-1) for v in (store.tau, store.rho, other.tau, other.rho)]
        return self._launch(fn, fresh.tau, fresh.rho, extra=(*caches, kernels.device_index(rows, fresh.xp)))

    def predict(self, m_in):
        return kernels.leaky_moment_match(m_in, self.slope)

    def warm_start(self, name, g):
        super().warm_start(name, g)
        self._seen_back[:] = True

    def reset_batch_caches(self):
        self.m_back.tau[...] = 0
        self.m_back.rho[...] = 0
        self._seen_back[:] = False

    def state(self):
        return dict(super().state(), seen_back=self._seen_back.copy())

    def load_state(self, arrays):
        super().load_state(arrays)
        self._seen_back = np.array(arrays["seen_back"], bool)
