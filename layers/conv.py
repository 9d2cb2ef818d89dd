"""2-D convolution by im2col: ``Z = A B + 1 c^T`` with patches ``A`` (P, D), kernel ``B`` (D, F), bias ``c``
(SPEC 5.3).

Images are ``(H, W, C)``.  The constant-input variant (first weighted layer) uses S1 with the kernel's
cavity; the variable-input variant uses S2 with the input marginal ``min_rho(m_in * m_to_x[i])`` gathered
into patches and the kernel marginal.  The messages to the kernel and bias are products over all
positions; the messages to the patch entries are products over output channels, merged over the copies of
each pixel by a deterministic fold (sum of natural parameters), then ``min_rho(MIN_PRECISION)``.

Options: ``padding`` (default 0), ``stride`` (1), ``padding_mode`` ("zeros", what PyTorch does, or
"mirror", the thesis code), and the prior overrides of :class:`layers.linear.Linear`.  Padding works for
hidden convolutions too; odd and even kernels are supported.

Batched schedules: every position of every example of a chunk is a use of the kernel; on NumPy arrays
with the compiled kernels on, the forward and the order-0 backward run on the fused kernels of
:mod:`factorgraph.kernels.chunk_cpu` (blocks of patch rows, bias message in the same pass).
"""

import numpy as np

from factorgraph import config, guards, kernels
from factorgraph.backend import get_array_module
from factorgraph.equations import (
    fold_messages,
    fold_plan,
    gather_constants,
    gather_messages,
    patch_index,
    s1_backward_to_b,
    s1_backward_to_b_gemm,
    s1_backward_to_bias,
    s1_forward,
    s2_backward,
    s2_backward_gemm,
    s2_forward,
    s2_forward_moments,
)
from factorgraph.factor import Factor, WeightSlots
from factorgraph.gaussian import Gaussian, WithMoments, clamp_min_rho
from factorgraph.kernels import chunk_cpu
from layers.linear import OPTIONS as LINEAR_OPTIONS
from layers.priors import bias_prior, weight_prior

OPTIONS = LINEAR_OPTIONS + ("padding", "stride", "padding_mode")


def _positive_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


class Conv(Factor):
    """``("Conv", filters, kernel_size[, padding][, {options}])``."""

    kind = "Conv"
    interfaces = ("input", "weight", "bias", "output")
    has_weights = True
    supports_chunks = True
    cache_names = ("m_to_x",)
    activation_cache_names = ("m_to_x",)

    def __init__(self, filters, kernel_size, padding=None, **options):
        super().__init__()
        if not _positive_int(filters):
            raise ValueError(f"Conv needs a positive integer number of filters, got {filters!r}")
        if not _positive_int(kernel_size):
            raise ValueError(f"Conv needs a positive integer kernel size, got {kernel_size!r}")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"Conv: unknown option(s) {sorted(unknown)}; allowed: {list(OPTIONS)}")
        if padding is not None:
            if "padding" in options:
                raise ValueError("Conv: padding given twice (positional and option)")
            options["padding"] = padding
        self.padding = options.pop("padding", 0)
        self.stride = options.pop("stride", 1)
        self.padding_mode = options.pop("padding_mode", "zeros")
        if isinstance(self.padding, bool) or not isinstance(self.padding, (int, np.integer)) or self.padding < 0:
            raise ValueError(f"Conv: padding must be an integer >= 0, got {self.padding!r}")
        if not _positive_int(self.stride):
            raise ValueError(f"Conv: stride must be a positive integer, got {self.stride!r}")
        if self.padding_mode not in ("zeros", "mirror"):
            raise ValueError(f"Conv: padding_mode must be 'zeros' or 'mirror', got {self.padding_mode!r}")
        if options.get("prior", "code") not in ("code", "thesis"):
            raise ValueError(f"Conv: option prior must be 'code' or 'thesis', got {options['prior']!r}")
        self.filters, self.k = int(filters), int(kernel_size)
        self.options = options

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv needs an image input (H, W, C), got shape {tuple(input_shape)}")
        _, (h, w) = patch_index(input_shape, self.k, self.stride, self.padding, self.padding_mode)
        return (h, w, self.filters)

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        super().build(input_shape, batch_size, dtype=dtype, rng=rng, constant_input=constant_input)
        self.src, _ = patch_index(input_shape, self.k, self.stride, self.padding, self.padding_mode)
        P, D = self.src.shape
        d_out = self.filters * P
        w = weight_prior((D, self.filters), D, d_out, constant_input, rng, dtype, self.options)
        c = bias_prior((self.filters,), dtype, self.options)
        self.params = {"W": WeightSlots(w, batch_size), "c": WeightSlots(c, batch_size)}
        if not constant_input:
            self.m_to_x = Gaussian.uniform((batch_size,) + self.input_shape, dtype)
        self._guards = kernels.GuardCounts(("s1_rest_variance_clamp", "s2_rest_variance_clamp"))
        self._dev = {}  # device copies of the patch index and fold plan

    def _src(self, like):
        """The patch index on the device of ``like`` (NumPy arrays use the host copy)."""
        if type(like) is np.ndarray:
            return self.src
        if "src" not in self._dev:
            self._dev["src"] = get_array_module(like).asarray(self.src)
        return self._dev["src"]

    def _plan(self, like):
        """The fold plan (the patch index, CSR offsets and entries) on the device of ``like``, built once."""
        key = "plan_" + get_array_module(like).__name__
        if key not in self._dev:
            xp = get_array_module(like)
            self._dev[key] = (self._src(like),) + tuple(
                xp.asarray(a) for a in fold_plan(self.src, int(np.prod(self.input_shape))))
        return self._dev[key]

    def _gather(self, m_in, constant, moments=False):
        """im2col of images (..., H, W, C) into patches (..., P, D): a constant array, a Gaussian whose
        zero-padding entries are point masses at 0, or with ``moments`` its (means, variances) gathered
        after they were computed on the image.  The compiled kernel of the arrays' device, else the NumPy
        reference."""
        like = m_in if constant else m_in.tau
        mod = kernels.module(like, "patches")
        if mod is None:
            if moments:
                return gather_constants(m_in.mean, self._src(like)), gather_constants(m_in.var, self._src(like))
            return (gather_constants if constant else gather_messages)(m_in, self._src(like))
        xp = get_array_module(like)
        lead = like.shape[:-3]
        src = self._src(like)
        n = int(np.prod(self.input_shape))

        def one(values, pad):
            out = xp.empty(lead + src.shape, values.dtype)
            mod.gather(xp.ascontiguousarray(values).reshape(-1, n), src, out.dtype.type(pad),
                       out.reshape((-1,) + src.shape))
            return out

        if constant:
            return one(m_in, 0.0)
        if moments:  # zero padding is a point mass at 0: mean 0, variance 0
            return one(m_in.mean, 0.0), one(m_in.var, 0.0)
        return Gaussian(one(m_in.tau, 0.0), one(m_in.rho, np.inf))

    def flush_guards(self):
        self._guards.flush()

    def _fold(self, to_a):
        """Patch messages (..., P, D) -> input messages (..., H, W, C): the product over every pixel's
        copies, deterministic (the compiled fold of the arrays' device, else the NumPy reference)."""
        mod = kernels.module(to_a.tau, "patches")
        if mod is None:
            return fold_messages(to_a, self.src, self.input_shape)
        xp = to_a.xp
        lead = to_a.shape[:-2]
        n = int(np.prod(self.input_shape))
        out = Gaussian(xp.empty(lead + (n,), to_a.dtype), xp.empty(lead + (n,), to_a.dtype))
        D2 = int(np.prod(to_a.shape[-2:]))
        mod.fold(xp.ascontiguousarray(to_a.tau).reshape(-1, D2), xp.ascontiguousarray(to_a.rho).reshape(-1, D2),
                 self._plan(to_a.tau), out.tau.reshape(-1, n), out.rho.reshape(-1, n))
        return out.reshape(*lead, *self.input_shape)

    def _out(self, g, lead=()):
        return g.reshape(*lead, *self.output_shape_)

    # --- training -------------------------------------------------------------------------------
    def forward(self, m_in, i):
        return self.forward_chunk(m_in, i, i)  # a chunk of one example, site = slot

    def backward(self, m_out, i):
        r = m_out.reshape(-1, self.filters)
        to_c = s1_backward_to_bias(self._cav_c, self._f, r)
        mod = kernels.module(r.tau, "patches")
        if mod is not None:
            to_w, to_a = self._backward_kernel(mod, r)
        elif self.constant_input:
            to_w = s1_backward_to_b(self._a, self._cav_w, self._f, r)
        else:
            to_a, to_w = s2_backward(self._patches(), self._qw, self._f, r)
        return self._store(to_w, to_c, None if self.constant_input else to_a, i, i, None)

    def _store(self, to_w, to_c, to_a, idx, site, damping, to_x=None):
        """Fold the patch messages ``to_a`` (or take the folded ``to_x``) into the input messages of slot(s)
        ``idx`` (min_rho) and put the kernel and bias messages into weight slot ``site``; returns the input
        message."""
        if to_a is not None:
            to_x = self._fold(to_a)
        if to_x is not None:
            to_x = clamp_min_rho(to_x, config.MIN_PRECISION)
            self.m_to_x[idx] = to_x
        self.params["W"].replace(site, to_w, damping)
        self.params["c"].replace(site, to_c, damping)
        return to_x

    def _backward_kernel(self, mod, r):
        """The same messages as the reference branch, by the fused patch kernels of ``mod``."""
        F, D = self.filters, self.src.shape[1]
        xp = r.xp
        counts = self._guards.array(r.tau)
        to_w = Gaussian(xp.empty((D, F), self.dtype), xp.empty((D, F), self.dtype))
        f_mu, f_var = self._f.mean, self._f.var
        if self.constant_input:
            w = self._cav_w
            mod.s1_patches_bwd(self._a, w.mean, w.var, f_mu, f_var, r.tau, r.rho, to_w.tau, to_w.rho, counts[0:1])
            self._guards.after_call(r.tau)
            return to_w, None
        q = self._qw
        shape = self._a.mean.shape
        to_a = Gaussian(xp.empty(shape, self.dtype), xp.empty(shape, self.dtype))
        mod.s2_patches_bwd(self._a.mean, self._a.var, q.mean, q.var, f_mu, f_var, r.tau, r.rho, to_a.tau, to_a.rho,
                           to_w.tau, to_w.rho, counts[1:2])
        self._guards.after_call(r.tau)
        return to_w, to_a

    # --- batched (chunk) training; with idx = site = i also the per-example forward ---------------
    def forward_chunk(self, m_in, idx, site):
        W, c = self.params["W"], self.params["c"]
        self._cav_c = c.cavity_moments(site)  # the backward reads these again
        fused = type(self._cav_c.tau) is np.ndarray and kernels.enabled()
        cav_c = self._cav_c
        if self.constant_input:
            self._a = self._gather(m_in, True)
            self._cav_w = w = W.cavity_moments(site)
            if fused and not np.isinf(w.var).any():
                a = self._a.reshape(-1, self._a.shape[-1])
                f = chunk_cpu.uses_forward(a, None, w.mean, w.var, cav_c.mean, cav_c.var)
            else:
                self._f = s1_forward(self._a, w, cav_c).with_moments()
                return self._out(self._f, m_in.shape[:-3])
        else:
            x_hat = clamp_min_rho(m_in * self.m_to_x[idx], config.MIN_PRECISION)
            # the backward reads the moments again: gathered from the image's, which equal the patches';
            # the natural parameters only where a path reads them (:meth:`_patches`)
            self._x_hat = x_hat
            self._a = WithMoments.of(None, None, *self._gather(x_hat, False, moments=True))
            self._qw = W.q.with_moments()  # W.q changes only in the backward's replace, after its last use
            if not fused:
                self._f = s2_forward(self._patches(), self._qw, cav_c).with_moments()
                return self._out(self._f, m_in.shape[:-3])
            D = self._a.mean.shape[-1]
            f = chunk_cpu.uses_forward(self._a.mean.reshape(-1, D), self._a.var.reshape(-1, D), self._qw.mean,
                                       self._qw.var, cav_c.mean, cav_c.var)
        lead = (self._a if self.constant_input else self._a.mean).shape[:-1]
        mu, var = (v.reshape(lead + (self.filters,)) for v in f)
        self._f = WithMoments.from_moments(mu, var)
        return self._out(self._f, m_in.shape[:-3])

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        """Chunk backward: all positions of all examples are uses of the kernel (rows c * P)."""
        n = m_out.shape[0]
        P, D = self.src.shape
        r = m_out.reshape(n * P, self.filters)
        f = self._f.reshape(n * P, self.filters)
        if expansion == 0 and type(r.tau) is np.ndarray and kernels.enabled():
            if self.constant_input:
                a = self._a.reshape(n * P, D)
            else:  # the moments only (the natural parameters may not have been gathered)
                a = WithMoments.of(None, None, self._a.mean.reshape(n * P, D), self._a.var.reshape(n * P, D))
            return self._backward_uses(a, f, r, n, idx, site, damping)
        a = (self._a if self.constant_input else self._patches()).reshape(n * P, D)
        to_c = s1_backward_to_bias(self._cav_c, f, r)
        if self.constant_input:
            to_w = (s1_backward_to_b(a, self._cav_w, f, r) if expansion is None
                    else s1_backward_to_b_gemm(a, self._cav_w, f, r, expansion))
            return self._store(to_w, to_c, None, idx, site, damping)
        to_a, to_w = (s2_backward(a, self._qw, f, r) if expansion is None
                      else s2_backward_gemm(a, self._qw, f, r, expansion))
        return self._store(to_w, to_c, to_a.reshape(n, P, D), idx, site, damping)

    def _backward_uses(self, a, f, r, n, idx, site, damping):
        """The chunk's kernel, bias and input messages to order 0 by the fused CPU kernels of
        :mod:`factorgraph.kernels.chunk_cpu` (one pass over blocks of patch rows, the patch messages folded
        into the images' as they are formed)."""
        r_t, r_r = np.ascontiguousarray(r.tau), np.ascontiguousarray(r.rho)
        cav_c = self._cav_c
        to_x = None
        if self.constant_input:
            tau_w, rho_w, tau_c, rho_c, clamps = chunk_cpu.s1_uses_backward(
                a, f.mean, f.var, r_t, r_r, self._cav_w.mean, cav_c.mean, cav_c.var)
        else:
            tx, rx, tau_w, rho_w, tau_c, rho_c, clamps = chunk_cpu.s2_uses_backward(
                a.mean, a.var, f.mean, f.var, r_t, r_r, self._qw.mean, self._qw.var, cav_c.mean, cav_c.var,
                fold=(self.src, int(np.prod(self.input_shape))))
            to_x = Gaussian(tx, rx).reshape(n, *self.input_shape)
        guards.record("s1_rest_variance_clamp", clamps)
        return self._store(Gaussian(tau_w, rho_w), Gaussian(tau_c, rho_c), None, idx, site, damping, to_x)

    def _patches(self):
        """The chunk's input patches (a :class:`WithMoments`): a forward that left their natural parameters
        out (the fused kernels read only the moments) has them gathered here, on first use."""
        if self._a.tau is None:
            g = self._gather(self._x_hat, False)
            self._a = WithMoments.of(g.tau, g.rho, self._a.mean, self._a.var)
        self._x_hat = None
        return self._a

    def reset_batch_caches(self):
        if not self.constant_input:
            self.m_to_x.tau[...] = 0
            self.m_to_x.rho[...] = 0

    # --- prediction -----------------------------------------------------------------------------
    def predict(self, m_in):
        W, c = self.params["W"], self.params["c"]
        n = m_in.shape[0]
        if self.constant_input:
            f = s1_forward(self._gather(m_in, True), W.q, c.q)
        else:
            f = s2_forward_moments(*self._gather(m_in, False, moments=True), W.q, c.q)
        return self._out(f, (n,))

    def describe(self):
        return (f"Conv(filters={self.filters}, k={self.k}, stride={self.stride}, padding={self.padding}, "
                f"{self.padding_mode}){self.input_shape}->{self.output_shape_}")
