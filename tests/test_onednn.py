"""jaxmnist.onednn: oneDNN's convolutions in XLA programs are torch's Conv2d, build here, and step aside cleanly."""

import dataclasses
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxmnist import autotune, convs, distributed, engine, models, onednn, presets, resume
from jaxmnist.convs import ConvPlan

# Where jaxmnist depends on oneDNN's wheels (pyproject.toml), the kernels must build: a missing step is a failure.
DEPENDED_ON = sys.platform == 'linux' and platform.machine() == 'x86_64'
# test_convs.SHAPES and two more: a stride of 3, and a strided 'VALID' conv whose last row is never read.
SHAPES = [(1, 3, 1, 1, 5), (2, 3, 1, 1, 5), (2, 3, 2, 1, 5), (2, 1, 2, 0, 5), (4, 3, 2, 1, 5), (7, 3, 2, 1, 5),
          (3, 2, 1, 0, 5), (5, 7, 2, 3, 5), (28, 5, 1, 0, 1), (28, 3, 1, 1, 1), (12, 5, 1, 0, 3), (14, 3, 2, 1, 4),
          (8, 3, 3, 1, 2), (8, 3, 2, 0, 3)]  # fmt: skip


def test_the_kernels_build_where_jaxmnist_depends_on_onednn():
    reason = onednn.unavailable()
    if DEPENDED_ON:
        assert reason is None, reason
    else:
        assert reason  # elsewhere it says why


needs_onednn = pytest.mark.skipif(not DEPENDED_ON, reason='oneDNN is a dependency on x86-64 Linux only')


@needs_onednn
@pytest.mark.parametrize('size, k, stride, padding, channels', SHAPES)
def test_onednn_is_torchs_conv2d(size, k, stride, padding, channels, rng):
    """Value and both gradients in float32 equal F.conv2d's in float64 to float32's rounding: 1e-5 of the largest
    magnitude (a wrong tap or a shifted row is off by far more)."""
    x, w = rng.standard_normal((3, channels, size, size)), rng.standard_normal((4, channels, k, k))
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ref = F.conv2d(xt, wt, stride=stride, padding=padding)
    g = rng.standard_normal(ref.shape)
    ref.backward(torch.tensor(g))

    @jax.jit
    def value_and_grads(x, w, g):
        out, vjp = jax.vjp(lambda x, w: convs.conv_onednn(x, w, stride, padding), x, w)
        return out, *vjp(g)

    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), jnp.float32)
    out, gx, gw = value_and_grads(nhwc(x), jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32), nhwc(g))
    assert 'custom_call_target="JaxmnistOnednnConv"' in value_and_grads.lower(nhwc(x), gw, nhwc(g)).as_text('hlo')
    for got, want in ((out, ref.detach().numpy().transpose(0, 2, 3, 1)), (gx, xt.grad.numpy().transpose(0, 2, 3, 1)),
                      (gw, wt.grad.numpy().transpose(2, 3, 1, 0))):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_other_dtypes_run_xlas_convolution(rng):
    """float64 (and any dtype but float32) is XLA's convolution, bit for bit: nothing calls oneDNN."""
    with jax.enable_x64():
        x, w = jnp.asarray(rng.standard_normal((2, 6, 6, 3))), jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
        hlo = jax.jit(lambda x, w: convs.conv_onednn(x, w, 1, 1)).lower(x, w).as_text('hlo')
        assert 'custom-call' not in hlo
        np.testing.assert_array_equal(convs.conv_onednn(x, w, 2, 1), convs.lax_conv(x, w, 2, 1))


@needs_onednn
def test_an_output_of_the_wrong_size_is_an_error_not_a_convolution():
    """The handler checks the shapes XLA hands it: an output one row short of torch's (stride 2 would let the
    right padding absorb it) is refused."""
    x, w = jnp.ones((1, 8, 8, 1)), jnp.ones((3, 3, 1, 1))
    with pytest.raises(Exception, match='shapes, stride and padding make no convolution'):
        jax.block_until_ready(onednn.ffi('forward', (1, 3, 4, 1), x, w, 2, 1))
    assert onednn.ffi('forward', (1, 4, 4, 1), x, w, 2, 1).shape == (1, 4, 4, 1)


def test_onednn_is_xlas_convolution_at_other_dtypes_to_the_tuner():
    """Not timed as a candidate of its own where it would run XLA's convolution (bfloat16), so never chosen by
    noise over it."""
    bf16 = convs.Geometry(14, 14, 32, 64, 3, 1, 1, 'bfloat16')
    assert convs.same_program_as_conv('onednn', bf16)
    assert not convs.same_program_as_conv('onednn', dataclasses.replace(bf16, dtype='float32'))


@needs_onednn
def test_vmapped_seeds_each_convolve_with_their_own_kernel(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 9, 9, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((2, 3, 3, 3, 5)), jnp.float32)
    # Each side one compiled program, as in training (op by op: a few dozen small compiles).
    grads = lambda c: jax.jit(jax.vmap(jax.grad(lambda x, w: jnp.sum(jnp.sin(c(x, w, 2, 1))), (0, 1))))(x, w)
    mine, xlas = grads(convs.conv_onednn), grads(convs.lax_conv)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), mine, xlas)


@needs_onednn
def test_a_network_on_onednn_trains_as_on_xlas_convolutions(rng):
    """The cnn_deep's training gradients with every layer on oneDNN (its stem: no input gradient, which XLA drops)
    equal those with XLA's convolution (float32: 2e-5 relative)."""
    model = models.get_model('cnn_deep')
    x = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4))
    variables = engine.init_variables(model, jax.random.PRNGKey(0))

    def grads(plan):
        def loss(params):
            logits, _ = model.clone(conv_plan=plan).apply(
                {**variables, 'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)},
                mutable=['batch_stats'],
            )
            return engine.cross_entropy(logits, labels).mean()

        step = jax.jit(jax.grad(loss), compiler_options=plan.compiler_options)
        return step(variables['params']), step.lower(variables['params']).as_text('hlo')

    (mine, hlo), (xlas, _) = grads(convs.fixed_plan('onednn')), grads(ConvPlan('eigen'))
    assert hlo.count('"JaxmnistOnednnConvInputGrad"') == len(convs.geometries(model, 4)) - 1  # all but the stem's
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max()), mine, xlas)


def _fresh_process(code: str, **env) -> str:
    """`code`'s output in a new Python (the kernels load once per process), with `env` added."""
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_turned_off_it_says_so_and_the_tuner_leaves_it_out():
    out = _fresh_process(
        'from jaxmnist import autotune, onednn; print(onednn.unavailable()); print(sorted(autotune.candidates()))',
        JAXMNIST_ONEDNN='off',
    )
    reason, names = out.splitlines()
    assert reason == 'turned off by JAXMNIST_ONEDNN' and 'onednn' not in names and 'eigen/conv' in names


def test_asked_for_where_it_cannot_run_is_one_clear_error(monkeypatch, rng):
    monkeypatch.setattr(onednn, '_load', lambda: 'no C++ compiler (g++ or $CXX) to build them')
    x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))
    with pytest.raises(onednn.Unavailable, match='onednn convolution formulation cannot run: no C\\+\\+ compiler'):
        convs.conv_onednn(x, w, 1, 1)
    assert 'onednn' not in autotune.candidates()
    # A cached timing of it is not chosen where it cannot run.
    g = convs.Geometry(4, 4, 1, 2, 3, 1, 1, 'float32')
    plan = autotune.choose({g: {'xla/conv': 0.3, 'eigen/conv': 0.2, 'matmul': 0.4, 'rows': 0.5, 'onednn': 0.01}}, 't')
    assert plan == ConvPlan('eigen')


def test_a_command_asked_for_it_where_it_cannot_run_says_so_in_one_line(tmp_path):
    """Before the data are read: a --data-dir with one of MNIST's four files would be another error (the command
    once loaded, here downloaded, MNIST first, only to stop)."""
    (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'not read')
    done = subprocess.run(
        [sys.executable, '-m', 'jaxmnist.train', '--model', 'cnn', '--conv-impl', 'onednn', '--epochs', '1',
         '--data-dir', str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, 'JAXMNIST_ONEDNN': 'off'},
    )  # fmt: skip
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --conv-impl onednn: oneDNN's convolutions cannot run here: turned off by JAXMNIST_ONEDNN"
    )


def test_a_run_resumed_where_its_onednn_plan_cannot_run_stops_before_compiling(monkeypatch):
    """Its checkpoint's plan names oneDNN: continuing bit for bit needs it, so the run stops, saying why, instead of
    running another plan or failing inside a trace."""
    monkeypatch.setattr(onednn, '_load', lambda: 'turned off by JAXMNIST_ONEDNN')
    checkpoint = {'conv_plan': convs.fixed_plan('onednn').to_json()}  # the resumed checkpoint's meta
    config = presets.PRESETS['cnn_tb']
    with pytest.raises(onednn.Unavailable, match='the run being resumed ran convolutions on oneDNN.*turned off by'):
        resume.choose_conv_plan(config, None, checkpoint, distributed.Placement(), print)
    monkeypatch.setattr(onednn, '_load', lambda: None)
    assert resume.choose_conv_plan(config, 'xla', checkpoint, distributed.Placement(), print).default == 'onednn'


@needs_onednn
def test_a_damaged_cached_build_is_built_again(tmp_path):
    """A truncated .so in the cache (a killed copy, a full disk) is built again, never a failed run."""
    built = onednn.build(onednn.build_inputs())  # this process's: its name is the cache key
    damaged = tmp_path / 'jaxmnist' / 'onednn' / built.name
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(built.read_bytes()[:100])
    code = 'from jaxmnist import onednn; print(onednn.unavailable())'
    assert _fresh_process(code, XDG_CACHE_HOME=str(tmp_path)).strip() == 'None'
    assert damaged.stat().st_size == built.stat().st_size


@needs_onednn
def test_a_read_only_cache_directory_builds_for_the_process_alone(tmp_path):
    """Where the cache cannot be written (a read-only home), the kernels are built into a temporary directory, which
    is gone once they are loaded."""
    (tmp_path / 'jaxmnist').write_text('a file where the cache directory would be')
    (tmp := tmp_path / 'tmp').mkdir()
    code = 'import ctypes; from jaxmnist import onednn as o; p = o.build(o.build_inputs()); ctypes.CDLL(p); print(p)'
    built = _fresh_process(code, XDG_CACHE_HOME=str(tmp_path), TMPDIR=str(tmp)).strip()
    assert built.startswith(str(tmp / onednn.PRIVATE_PREFIX))
    code = 'from jaxmnist import onednn; print(onednn.unavailable())'
    assert _fresh_process(code, XDG_CACHE_HOME=str(tmp_path), TMPDIR=str(tmp)).strip() == 'None'
    assert [p.name for p in tmp.iterdir()] == [Path(built).parent.name]  # the first process's, not the second's
    shutil.rmtree(Path(built).parent)
    failed = _fresh_process(code, XDG_CACHE_HOME=str(tmp_path), TMPDIR=str(tmp), CXX='false').strip()
    assert failed.startswith('building onednn_conv') and not list(tmp.iterdir())  # a failed build leaves nothing
