"""How the networks' convolutions run: each layer's formulation and XLA:CPU's kernel library, chosen per machine.

The same convolution costs up to 20x more or less on one x86 CPU than on another, depending on which of XLA:CPU's
kernels runs it: by default XLA hands convolutions to YNNPACK, which on CPUs without AVX-512 is 5-13x slower than
XLA's older Eigen kernels for the blog's layers, and up to 6-8x slower on an AVX-512 + AMX Xeon and an AVX-512 Zen 5
(benchmarks/README.md, "Convolutions on AVX2 CPUs", "The plan on an AVX-512 + AMX CPU", "A Zen 5"). So a plan
(`ConvPlan`) says, per network, which of these candidates runs, as `jaxmnist.autotune` measures them per machine:

- the *library* (a compiler option of a whole program, so one per network): `xla` (XLA's default kernels) or
  `eigen` (YNNPACK's fusions cut down to reductions, `--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`,
  so convolutions run on Eigen's kernels);
- each layer's *formulation*: `conv` (`lax.conv_general_dilated`), `matmul` (im2col by strided slices and one
  GEMM, `conv_as_matmul`), `rows` (XLA's convolution, its input gradient as GEMMs over whole input rows with a
  banded kernel, `conv_rows_input_grad`), `phases` (XLA's convolution, a strided layer's input gradient as one
  stride-1 convolution per output phase, `conv_phases_input_grad`) or `onednn` (oneDNN's kernels, PyTorch's,
  called from the program: `conv_onednn`, where `jaxmnist.onednn` could build them).

Every candidate computes the same function (float64 tests against `lax.conv` in tests/test_convs.py; oneDNN's,
float32 only, against float64 in tests/test_onednn.py); only the rounding differs, so a resumed run takes the plan
of the run it resumes (`ConvPlan.to_json`, in the checkpoint).

    plan = autotune.plan_for('auto', model, batch_size=512)   # measured once per machine, cached
    model = model.clone(conv_plan=plan)
    jax.jit(step, compiler_options=plan.compiler_options)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import onednn

# What `--conv-impl` accepts: `auto` measures; the others fix the plan. `xla` is XLA's own choice for everything
# (the default on GPUs and TPUs, where nothing is measured).
IMPLS = ('auto', 'xla', 'eigen', 'matmul', 'onednn')
# A program's compiler options per library. `eigen` hands YNNPACK only the reductions, so convolutions go back to
# XLA's Eigen kernels while BatchNorm's statistics and gradient sums stay on YNNPACK: with none of YNNPACK's fusions
# XLA:CPU rewrites a long reduction as a reduce-window, ~7x slower (cnn_deep's step at batch 512 on a Zen 3: 11 %
# of it; benchmarks/README.md, "Reductions back on YNNPACK"). `library_options` drops the reductions on an XLA
# that does not know the option's value.
YNN_FUSIONS = 'xla_cpu_experimental_ynn_fusion_type'
LIBRARIES = {'xla': {}, 'eigen': {YNN_FUSIONS: 'LIBRARY_FUSION_TYPE_REDUCE'}}
ENV_IMPL = 'JAXMNIST_CONV_IMPL'  # the default of --conv-impl


# ------------------------------------------------------------------------------------------ formulations
def lax_conv(x, kernel, stride: int, padding: int):
    """torch's Conv2d on NHWC x HWIO through XLA's convolution."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


def conv_as_matmul(x, kernel, stride: int, padding: int):
    """torch's Conv2d (NHWC x HWIO) as im2col by strided slices plus one matmul, leaving out the kernel taps
    that only ever see padding (their products are exact zeros). Wins where XLA:CPU's convolution has a slow
    path: single-channel inputs (its weight gradient) and the 1x1 and 2x2 maps of torchvision's deep stages."""
    kh, kw, _, features = kernel.shape
    h, w = x.shape[1:3]
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1

    def real(offset, size, out):  # does tap offset ever read an unpadded row (column)?
        return any(padding <= offset + stride * t < padding + size for t in range(out))

    taps = [(i, j) for i in range(kh) for j in range(kw) if real(i, h, ho) and real(j, w, wo)]
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    patches = jnp.concatenate(
        [x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] for i, j in taps], -1
    )
    return patches @ jnp.concatenate([kernel[i, j] for i, j in taps], 0).reshape(-1, features)


# Output columns per GEMM of row_matmuls. Its transpose (the input gradient) at batch 512 on a Zen 4, tiles of 2, 4,
# 8: cnn's 12x12 10->20 5x5 8.4, 5.3, 6.1 ms; resnet's 28x28 16->32 3x3/2 47.9, 36.5, 44.7 ms (XLA's: 20.3, 75.4).
ROW_TILE = 4


def row_matmuls(x, kernel, stride: int, padding: int, tile: int = ROW_TILE):
    """torch's Conv2d (NHWC x HWIO) as GEMMs over whole input rows: for each tile of `tile` output columns, the
    K input rows an output row reads (their columns under the tile, all channels) concatenated, times a banded
    matrix that holds the kernel at every column offset. It multiplies zeros (the band: about (tile + K - 1) / K
    times the convolution's multiply-adds), but in GEMMs of tile * Cout columns where im2col's have Cout."""
    k, _, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    b, hp, wp, _ = x.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    rows_of = [x[:, i : i + stride * (ho - 1) + 1 : stride] for i in range(k)]  # [B, Ho, Wp, Cin] per kernel row
    outs = []
    for x0 in range(0, wo, tile):
        width = min(tile, wo - x0)
        span = stride * (width - 1) + k  # input columns the tile reads, from stride * x0
        band = np.zeros((k, span, width), np.float32)  # band[j, column, out] = 1 where out reads column at tap j
        for j in range(k):
            band[j, stride * np.arange(width) + j, np.arange(width)] = 1
        weights = jnp.einsum('jso,ijcf->iscof', band.astype(kernel.dtype), kernel)
        cols = slice(stride * x0, stride * x0 + span)
        lhs = jnp.concatenate([r[:, :, cols].reshape(b, ho, span * cin) for r in rows_of], -1)
        outs.append((lhs @ weights.reshape(k * span * cin, width * cout)).reshape(b, ho, width, cout))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, 2)


def rows_input_grad(x, kernel, stride: int, padding: int, dy):
    """The input's gradient as the transpose of `row_matmuls` (no forward GEMMs traced for it). XLA's is a full
    convolution of the zero-padded cotangent, which Eigen's kernels run slowly for few channels and wide kernels:
    cnn's 12x12 10->20 5x5 at batch 512 on a Zen 4, 18.5 ms, where the row GEMMs' transpose takes 5.1 (forward 4.3
    against their 6.1, kernel gradient 7.4 against 9.1: those stay XLA's; benchmarks/README.md, "Row GEMMs for an
    input gradient")."""
    return jax.linear_transpose(lambda x: row_matmuls(x, kernel, stride, padding), x)(dy)[0]


def phase_kernel(kernel, stride: int, padding: int):
    """A strided convolution's input gradient as one stride-1 convolution of dy: its kernel [M, M, Cout, s*s*Cin]
    and its window's offset `lo`. Along each axis input row s*q + r gets the sum over t of dy[q + t] * w[r + p - s*t],
    t from lo = ceil((p - K + 1) / s) to floor((s - 1 + p) / s): a window of M rows of dy, one group of Cin output
    channels per phase r, zeros where r + p - s*t falls outside the kernel."""
    k, _, cin, cout = kernel.shape
    s, p = stride, padding
    lo = -((k - 1 - p) // s)
    m = (s - 1 + p) // s - lo + 1
    pick = np.zeros((m, s, k), np.float32)  # pick[j, r, tap] = 1 where tap = r + p - s * (lo + j)
    for j in range(m):
        for r in range(s):
            if 0 <= (tap := r + p - s * (lo + j)) < k:
                pick[j, r, tap] = 1
    pick = pick.astype(kernel.dtype)
    # 'highest': a selection, exact also where matmuls round (TF32 on GPUs)
    w = jnp.einsum('ark,bsl,klio->aborsi', pick, pick, kernel, precision='highest')
    return w.reshape(m, m, cout, s * s * cin), lo


def phase_input_grad(dy, kernel, stride: int, padding: int, size: tuple[int, int]):
    """The input gradient of a strided convolution (NHWC x HWIO; input `size`) without XLA's zeros: one stride-1
    convolution of dy to s*s*Cin channels (`phase_kernel`), then the phases interleaved (depth to space). XLA
    convolves the cotangent dilated s-fold, s*s times the multiply-adds: resnet's 28x28 16->32 3x3/2 at batch 512
    on a Zen 4, 82.7 against 25.0 ms (benchmarks/README.md, "Strided input gradients by phases")."""
    s, cin = stride, kernel.shape[2]
    w, lo = phase_kernel(kernel, stride, padding)
    m = w.shape[0]
    n, ho, wo, _ = dy.shape
    qh, qw = -(-size[0] // s), -(-size[1] // s)  # rows and columns per phase
    pads = ((0, 0, 0), (-lo, qh - 1 + m - ho + lo, 0), (-lo, qw - 1 + m - wo + lo, 0), (0, 0, 0))
    dy = jax.lax.pad(dy, jnp.zeros((), dy.dtype), pads)  # negative: rows of dy that reach only padding, cropped
    out = jax.lax.conv_general_dilated(dy, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    out = out.reshape(n, qh, qw, s, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, qh * s, qw * s, cin)
    return out[:, : size[0], : size[1]]


def phases_input_grad(x, kernel, stride: int, padding: int, dy):
    """A strided layer's input gradient by `phase_input_grad`; at stride 1, XLA's (INPUT_GRAD_ONLY)."""
    if stride == 1:
        return jax.vjp(lambda x: lax_conv(x, kernel, stride, padding), x)[1](dy)[0]
    return phase_input_grad(dy, kernel, stride, padding, x.shape[1:3])


def with_input_grad(input_grad: Callable) -> Callable:
    """XLA's convolution, forward and for the kernel's gradient, with the input's gradient computed by
    `input_grad(x, kernel, stride, padding, dy)`. On the CPU x passes `fusion_barrier`, as in `conv_behind_barrier`."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def conv(x, kernel, stride: int, padding: int):
        return lax_conv(x, kernel, stride, padding)

    def forward(x, kernel, stride, padding):
        x = fusion_barrier(x) if jax.default_backend() == 'cpu' else x
        return lax_conv(x, kernel, stride, padding), (x, kernel)

    def backward(stride, padding, residuals, dy):
        x, kernel = residuals
        dk = jax.vjp(lambda k: lax_conv(x, k, stride, padding), kernel)[1](dy)[0]
        return input_grad(x, kernel, stride, padding, dy), dk

    conv.defvjp(forward, backward)
    return conv


conv_rows_input_grad = with_input_grad(rows_input_grad)
conv_phases_input_grad = with_input_grad(phases_input_grad)


def conv_onednn(x, kernel, stride: int, padding: int):
    """torch's Conv2d through oneDNN's kernels (`jaxmnist.onednn`) where it can: float32 on the CPU; otherwise
    XLA's convolution."""
    if onednn.runs(x, kernel):
        return onednn.conv(x, kernel, stride, padding)
    return lax_conv(x, kernel, stride, padding)


FORMULATIONS: dict[str, Callable] = {
    'conv': lax_conv,
    'matmul': conv_as_matmul,
    'rows': conv_rows_input_grad,
    'phases': conv_phases_input_grad,
    'onednn': conv_onednn,
}
# The formulations that are XLA's convolution but for the input gradient, and the least stride at which theirs
# differs from XLA's (`phases` keeps XLA's at stride 1).
INPUT_GRAD_ONLY = {'rows': 1, 'phases': 2}


def same_program_as_conv(formulation: str, geometry: Geometry, input_grad: bool = True) -> bool:
    """Whether `formulation` runs this layer as XLA's convolution does, the same program: an INPUT_GRAD_ONLY
    formulation where no input gradient is computed (a stem) or below its stride; `onednn` at any dtype but float32."""
    if formulation == 'onednn':
        return geometry.dtype != 'float32'
    least = INPUT_GRAD_ONLY.get(formulation)
    return least is not None and (not input_grad or geometry.stride < least)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One convolution as the network calls it, less the batch: input H x W x Cin, Cout, a K x K kernel."""

    h: int
    w: int
    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    dtype: str

    @classmethod
    def of(cls, x, kernel, stride: int, padding: int) -> Geometry:
        kh, _, cin, cout = kernel.shape
        return cls(x.shape[1], x.shape[2], cin, cout, kh, stride, padding, jnp.dtype(x.dtype).name)

    @property
    def key(self) -> str:
        return (
            f'{self.h}x{self.w} {self.cin}->{self.cout} {self.k}x{self.k}/{self.stride} pad {self.padding} {self.dtype}'
        )

    def out_size(self) -> int:
        return (self.h + 2 * self.padding - self.k) // self.stride + 1


# ---------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """The library of a network's programs and each layer's formulation (`layers`: pairs of Geometry.key and a
    FORMULATIONS name; a layer not listed uses `default`). Hashable: a module attribute, static under jit."""

    library: str = 'xla'
    default: str = 'conv'
    layers: tuple[tuple[str, str], ...] = ()
    # How it was chosen (fixed, measured, cached, resumed): said, not compared, so that a plan read from the cache is the
    # one just measured (the programs compiled for one seed serve the next).
    source: str = dataclasses.field(default='fixed', compare=False)

    def __post_init__(self):
        if self.library not in LIBRARIES:
            raise ValueError(f'unknown convolution library {self.library!r}; choose from {", ".join(LIBRARIES)}')
        for name in [self.default, *dict(self.layers).values()]:
            if name not in FORMULATIONS:
                raise ValueError(f'unknown convolution formulation {name!r}; choose from {", ".join(FORMULATIONS)}')

    def formulation(self, geometry: Geometry) -> str:
        return dict(self.layers).get(geometry.key, self.default)

    @property
    def compiler_options(self) -> dict:
        """The XLA options every program that runs the network compiles with (none off the CPU)."""
        return library_options(self.library) if jax.default_backend() == 'cpu' else {}

    def require_runnable(self, why: str = '') -> ConvPlan:
        """The plan itself, where this process can run every formulation it names; else onednn.Unavailable, `why`
        first (one line and exit 1 from a command, before anything compiles). Off the CPU every formulation is XLA's
        convolution: nothing to check."""
        if jax.default_backend() != 'cpu':
            return self
        if 'onednn' in {self.default, *dict(self.layers).values()} and (reason := onednn.unavailable()):
            raise onednn.Unavailable(f"{why}oneDNN's convolutions cannot run here: {reason}")
        return self

    def describe(self) -> str:
        """One line: the library and which layers run as what."""
        by = {}
        for key, name in self.layers:
            by.setdefault(name, []).append(key.rsplit(' pad', 1)[0])
        parts = [f'{name}: {", ".join(keys)}' for name, keys in sorted(by.items())]
        return f'{self.library} kernels ({self.source}); ' + ('; '.join(parts) or f'every layer as {self.default}')

    def to_json(self) -> dict:
        return {'library': self.library, 'default': self.default, 'layers': [list(p) for p in self.layers]}

    @classmethod
    def from_json(cls, d: dict, source: str = 'resumed') -> ConvPlan:
        return cls(d['library'], d['default'], tuple(tuple(p) for p in d['layers']), source)


XLA = ConvPlan()


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple) -> bool:
    """Whether this XLA compiles a program with these options (an unknown enum value is an error at compile)."""
    try:
        jax.jit(lambda x: x.sum(0), compiler_options=dict(options)).lower(jnp.zeros((64, 2))).compile()
    except Exception:  # XlaRuntimeError or ValueError, depending on the version
        return False
    return True


def library_options(library: str) -> dict:
    """LIBRARIES[library], or with every YNNPACK fusion off where this XLA rejects the value (Eigen's convolutions
    either way: only the reductions' speed differs)."""
    options = dict(LIBRARIES[library])
    if options and not _accepted(tuple(sorted(options.items()))):
        options[YNN_FUSIONS] = ''
    return options


def conv2d(x, kernel, stride: int, padding: int, plan: ConvPlan = XLA):
    """torch's Conv2d on NHWC x HWIO, in the formulation `plan` gives this layer. Under Eigen's kernels on the CPU,
    XLA's convolution is `conv_behind_barrier`."""
    geometry = Geometry.of(x, kernel, stride, padding)
    formulation = plan.formulation(geometry)
    if formulation == 'conv' and plan.library == 'eigen' and jax.default_backend() == 'cpu':
        return conv_behind_barrier(x, kernel, stride, padding)
    return FORMULATIONS[formulation](x, kernel, stride, padding)


def fusion_barrier(x):
    """x (an array or a tuple of them) itself, as the output of a conditional that XLA cannot fold (its predicate
    is always true, but not provably so), so that XLA:CPU cannot fuse x's producers into x's consumers.
    (jax.lax.optimization_barrier cannot do this on the CPU: XLA removes it before fusing.)"""
    first = jax.tree.leaves(x)[0]
    bits = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[first.dtype.itemsize]
    always = (jax.lax.bitcast_convert_type(first.reshape(-1)[0], bits) | 1) != 0
    return jax.lax.cond(always, lambda v: v, lambda v: jax.tree.map(jnp.negative, v), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_behind_barrier(x, kernel, stride: int, padding: int):
    """XLA's convolution; differentiated, its input passes `fusion_barrier` first.

    Why: Eigen's weight-gradient kernel reads a convolution's input as [C, H, W, N]. XLA makes that transposed
    copy in the forward pass and fuses into it everything that produced x: BatchNorms, ReLUs, residual adds,
    recomputed from up to 18 inputs read across the grain, at 0.1-0.3 GB/s (resnet at batch 512 on a Zen 3:
    eight such copies took ~650 ms of a 2.1 s step). Behind the barrier x is computed once, and the copy only
    transposes it: the same step bit for bit (tests/test_convs.py), 4-14 % faster (benchmarks/README.md). Not
    in inference, which makes no such copy and runs up to 8 % slower behind it."""
    return lax_conv(x, kernel, stride, padding)


def _barrier_fwd(x, kernel, stride, padding):
    x = fusion_barrier(x)
    return lax_conv(x, kernel, stride, padding), (x, kernel)


def _barrier_bwd(stride, padding, residuals, dy):
    return jax.vjp(lambda x, kernel: lax_conv(x, kernel, stride, padding), *residuals)[1](dy)


conv_behind_barrier.defvjp(_barrier_fwd, _barrier_bwd)


@dataclasses.dataclass(frozen=True)
class _Recorder(ConvPlan):
    """A plan that notes every geometry it is asked about (tracing only)."""

    seen: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def formulation(self, geometry: Geometry) -> str:
        if geometry not in self.seen:
            self.seen.append(geometry)
        return self.default


def geometries(model, batch_size: int) -> list[Geometry]:
    """The convolutions a training step of `model` calls, in order (traced abstractly: nothing runs)."""
    recorder = _Recorder()
    probe = model.clone(conv_plan=recorder)
    x = jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    rngs = {'dropout': jax.random.PRNGKey(0)}
    jax.eval_shape(lambda v, x: probe.apply(v, x, train=True, rngs=rngs, mutable=['batch_stats']), variables, x)
    return list(recorder.seen)


def add_flag(p, what: str = '') -> None:
    """--conv-impl, every command's one flag for how convolutions run; `what` ends its help."""
    p.add_argument(
        '--conv-impl',
        choices=IMPLS,
        help=f'how convolutions run: auto (default, or ${ENV_IMPL}) times XLA:CPU\'s kernel libraries and '
        'formulations once per machine and keeps the fastest (cached); xla: XLA\'s own choice (the default off the '
        'CPU); eigen: XLA\'s Eigen kernels; matmul: im2col and a GEMM; onednn: oneDNN\'s kernels, PyTorch\'s '
        f'(float32 on the CPU){what}',
    )


def fixed_plan(impl: str) -> ConvPlan:
    """`xla`, `eigen` (every layer through lax.conv), `matmul` (every layer im2col + GEMM, Eigen's library) or
    `onednn` (every layer on oneDNN, the rest on Eigen's library)."""
    if impl == 'xla':
        return XLA
    if impl == 'eigen':
        return ConvPlan('eigen')
    if impl in ('matmul', 'onednn'):
        return ConvPlan('eigen', default=impl)
    raise ValueError(f'unknown --conv-impl {impl!r}; choose from {", ".join(IMPLS)}')
