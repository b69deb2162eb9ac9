"""jaxmnist.convs: every formulation is torch's Conv2d, the libraries compute the same, plans route layers."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxmnist import convs, engine, layers, models, onednn, presets
from jaxmnist.convs import ConvPlan

# (input size, kernel, stride, padding, channels): torchvision's deep stages on 28x28 inputs (1x1 and 2x2 maps,
# padded 3x3 and strided 1x1 convs), larger maps, unpadded, even and 7x7 kernels, then the blog's layer shapes
# scaled down in width: single-channel 28x28 stems, cnn_deep's 'VALID' 5x5 and resnet's strided 3x3.
SHAPES = [(1, 3, 1, 1, 5), (2, 3, 1, 1, 5), (2, 3, 2, 1, 5), (2, 1, 2, 0, 5), (4, 3, 2, 1, 5), (7, 3, 2, 1, 5),
          (3, 2, 1, 0, 5), (5, 7, 2, 3, 5), (28, 5, 1, 0, 1), (28, 3, 1, 1, 1), (12, 5, 1, 0, 3), (14, 3, 2, 1, 4)]  # fmt: skip


# Besides the formulations: XLA's convolution as Eigen's plans run it. (`rows`'s input gradient is the transpose of
# convs.row_matmuls, tiles of 4 columns, the shapes' last ones 1-4 wide: equal gradients make the GEMMs exact too.)
PARTS = {'behind barrier': convs.conv_behind_barrier}


# oneDNN computes float32 only (float64 is XLA's convolution there): tests/test_onednn.py holds it to F.conv2d.
@pytest.mark.parametrize('formulation', [*(f for f in convs.FORMULATIONS if f != 'onednn'), *PARTS])
@pytest.mark.parametrize('size, k, stride, padding, channels', SHAPES)
def test_every_formulation_is_torchs_conv2d(formulation, size, k, stride, padding, channels, rng):
    """Values and both gradients equal F.conv2d's (float64: the sums are only reordered, so 1e-12)."""
    x = rng.standard_normal((3, channels, size, size))
    w = rng.standard_normal((4, channels, k, k))
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ref = F.conv2d(xt, wt, stride=stride, padding=padding)
    g = rng.standard_normal(ref.shape)
    ref.backward(torch.tensor(g))
    conv = {**convs.FORMULATIONS, **PARTS}[formulation]

    @jax.jit  # one program: run op by op, the formulations' dozens of small ops compiled one by one (4x slower)
    def value_and_grads(x, w, g):
        out, vjp = jax.vjp(lambda x, w: conv(x, w, stride, padding), x, w)
        return out, *vjp(g)

    with jax.enable_x64():
        nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
        out, gx, gw = value_and_grads(nhwc(x), jnp.asarray(w.transpose(2, 3, 1, 0)), nhwc(g))
    np.testing.assert_allclose(out, ref.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)


def test_libraries_compute_the_same_convolution(rng):
    """A program compiled with each library's options gives XLA's convolution and both gradients (float32, where
    the libraries differ: 1e-5 relative to the largest value); in Eigen's program YNNPACK runs no convolution."""
    x = jnp.asarray(rng.standard_normal((8, 12, 12, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 8)) / 12, jnp.float32)
    loss = lambda x, w: jnp.sum(jnp.sin(convs.lax_conv(x, w, 1, 1)))
    f = lambda x, w: (convs.lax_conv(x, w, 1, 1), *jax.grad(loss, argnums=(0, 1))(x, w))
    results = {}
    for library in convs.LIBRARIES:
        compiled = jax.jit(f, compiler_options=convs.library_options(library)).lower(x, w).compile()
        if library == 'eigen':
            assert not [c for c in ynn_fusions(compiled.as_text()) if 'convolution(' in c]
        results[library] = compiled(x, w)
    for a, b in zip(results['xla'], results['eigen']):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


def ynn_fusions(hlo: str) -> list[str]:
    """The bodies of the computations that a compiled program hands to YNNPACK (its `ynn_fusion`s)."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if m := re.match(r'^(?:ENTRY )?%(\S+) .*\{$', line):
            name = m.group(1)
            bodies[name] = ''
        elif name:
            bodies[name] += line + '\n'
    called = re.findall(r'ynn_fusion[\w.]* = .*calls=%([\w.\-]+)', hlo)
    return [bodies[c] for c in called]


def test_eigens_library_leaves_reductions_to_ynnpack_and_no_convolution(rng):
    """Under `eigen` YNNPACK runs the reductions (with none of its fusions XLA rewrites a long reduction as a slow
    reduce-window) and none of the networks' convolutions: YNNPACK would pull a convolution into a reduction that
    is its only consumer, which no train step has (resnet's, the network with the most: all on Eigen's kernels)."""
    options = convs.library_options('eigen')
    x = jnp.asarray(rng.standard_normal((64, 24, 24, 8)), jnp.float32)
    stats = jax.jit(lambda x: layers.batch_moments(x), compiler_options=options).lower(x).compile().as_text()
    assert 'reduce-window' not in stats and len(ynn_fusions(stats)) >= 1
    state = engine.create_state(presets.PRESETS['resnet'], jax.random.PRNGKey(0), conv_plan=ConvPlan('eigen'))
    batch = {'image': jnp.zeros((4, 28, 28, 1)), 'label': jnp.zeros((4,), jnp.int32)}
    step = jax.jit(engine.train_step, compiler_options=options).lower(state, batch).compile().as_text()
    fused = ynn_fusions(step)
    assert fused and step.count('convolution(') >= 30
    assert not [body for body in fused if 'convolution(' in body]


def test_an_xla_that_rejects_the_reductions_option_gets_every_ynnpack_fusion_off(monkeypatch):
    """A version of XLA without LIBRARY_FUSION_TYPE_REDUCE must not break a run: Eigen's convolutions all the same."""
    monkeypatch.setitem(convs.LIBRARIES, 'eigen', {convs.YNN_FUSIONS: 'LIBRARY_FUSION_TYPE_NOT_IN_THIS_XLA'})
    assert convs.library_options('eigen') == {convs.YNN_FUSIONS: ''}
    assert convs.library_options('xla') == {}


def test_the_fusion_barrier_changes_the_program_not_the_bits(monkeypatch, rng):
    """Under Eigen's kernels every XLA convolution, differentiated, reads its input through `fusion_barrier`: the
    compiled step keeps the conditionals (XLA did not fold them), and its loss and gradients equal bit for bit
    those of the same step without the barriers (cnn with its first block composed, so two convolutions, at batch 4,
    training mode). Inference runs no barrier."""
    model = models.CNN(conv_plan=ConvPlan('eigen'), fuse_first_block=False)
    x = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(4) % 10
    variables = engine.init_variables(model, jax.random.PRNGKey(0))

    def loss(params, x):
        logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    def step():
        program = jax.jit(jax.value_and_grad(loss), compiler_options=model.conv_plan.compiler_options)
        return program.lower(variables['params'], x).compile()

    barred = step()
    assert barred.as_text().count('conditional(') == 2  # one per convolution
    inference = jax.jit(functools.partial(model.apply, train=False), compiler_options=model.conv_plan.compiler_options)
    assert 'conditional(' not in inference.lower(variables, x).compile().as_text()
    monkeypatch.setattr(convs, 'fusion_barrier', lambda x: x)
    plain = step()
    assert 'conditional(' not in plain.as_text()
    for a, b in zip(jax.tree.leaves(barred(variables['params'], x)), jax.tree.leaves(plain(variables['params'], x))):
        np.testing.assert_array_equal(a, b)


def test_geometries_are_the_networks_convolutions():
    """The trace finds every convolution a training step calls, once each, in order; the fast network's fused
    first stage and the cnn's fused first block are no convolution."""
    keys = [g.key for g in convs.geometries(models.get_model('cnn_deep'), 4)]
    assert keys == [
        '28x28 1->32 5x5/1 pad 0 float32',
        '24x24 32->32 5x5/1 pad 0 float32',
        '10x10 32->64 3x3/1 pad 0 float32',
        '8x8 64->64 3x3/1 pad 0 float32',
    ]
    assert next(g.key for g in convs.geometries(models.get_model('fast'), 4)).startswith('14x14 32->64 3x3/1')
    assert [g.key for g in convs.geometries(models.get_model('cnn'), 4)] == ['12x12 10->20 5x5/1 pad 0 float32']
    assert len(convs.geometries(models.get_model('resnet18'), 4)) == 11


def test_a_plan_routes_only_its_listed_layers(monkeypatch):
    """Layers the plan lists run as their formulation; the others as its default; logits agree (float32)."""
    calls = []
    matmul = convs.conv_as_matmul
    monkeypatch.setitem(convs.FORMULATIONS, 'matmul', lambda *a: calls.append(a[0].shape) or matmul(*a))
    listed = ('7x7 64->64 3x3/1 pad 1 float32', '14x14 32->64 3x3/2 pad 1 float32')
    plan = ConvPlan('eigen', 'conv', tuple((k, 'matmul') for k in listed))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 28, 28, 1)), jnp.float32)
    model = models.get_model('resnet')
    variables = engine.init_variables(model, jax.random.PRNGKey(0))  # one program: eagerly, resnet's init takes 30 s
    logits = lambda model: jax.jit(functools.partial(model.apply, train=False))(variables, x)  # calls: as traced
    planned = logits(model.clone(conv_plan=plan))
    # three 7x7 64->64 convs; the strided conv and the 3x3 projection of the first block of stage 3
    assert sorted(calls) == [(2, 7, 7, 64)] * 3 + [(2, 14, 14, 32)] * 2
    np.testing.assert_allclose(planned, logits(model), rtol=1e-5, atol=1e-5)


# The tuner's custom gradients where it takes them on x86 (benchmarks/README.md): `rows` for the cnn's 12x12 layer,
# `phases` for resnet's strided 28x28 one (its conv1 and projection; two of its three stages, for a small program),
# `onednn` for its 28x28 16->16 (the first stage's, between BatchNorms and a residual add).
CUSTOM_GRADIENTS = [
    ('cnn', {}, '12x12 10->20 5x5/1 pad 0 float32', 'rows', 'block1_0'),
    ('resnet', {'stage_sizes': (1, 1)}, '28x28 16->32 3x3/2 pad 1 float32', 'phases', 'conv'),
    pytest.param(
        'resnet', {'stage_sizes': (1, 1)}, '28x28 16->16 3x3/1 pad 1 float32', 'onednn', 'conv',
        marks=pytest.mark.skipif(onednn.unavailable() is not None, reason='oneDNN cannot run here (test_onednn.py)'),
    ),
]


@pytest.mark.parametrize('name, sizes, key, formulation, first', CUSTOM_GRADIENTS)
def test_custom_gradients_train_a_network_as_its_convolution_does(name, sizes, key, formulation, first):
    """The network's training gradients (dropout and BatchNorm on, the same draws) with the formulation for one
    layer equal the convolution's (float32: 1e-5): the custom gradient inside a network."""
    model = models.get_model(name).clone(**sizes)
    assert key in [g.key for g in convs.geometries(model, 8)]  # the plan routes a layer the network has
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8))
    variables = engine.init_variables(model, jax.random.PRNGKey(0))
    params, stats = variables['params'], variables['batch_stats']

    def grads(plan):
        def loss(params):
            logits, _ = model.clone(conv_plan=plan).apply(
                {'params': params, 'batch_stats': stats}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)},
                mutable=['batch_stats'],
            )
            return engine.cross_entropy(logits, labels).mean()

        return jax.jit(jax.grad(loss), compiler_options=plan.compiler_options)(params)

    custom = grads(ConvPlan('eigen', 'conv', ((key, formulation),)))
    conv = grads(ConvPlan('eigen'))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), custom, conv)
    assert float(jnp.abs(custom[first]['kernel']).max()) > 1e-3  # gradients reach the first layer through it


def test_plan_json_round_trip_and_bad_names():
    plan = ConvPlan('eigen', 'conv', (('7x7 64->64 3x3/1 pad 1 float32', 'matmul'),), 'measured')
    again = ConvPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert (again.library, again.default, again.layers, again.source) == (
        *(plan.library, plan.default),
        plan.layers,
        'resumed',
    )
    assert hash(again) == hash(ConvPlan.from_json(plan.to_json()))
    assert 'matmul: 7x7 64->64 3x3/1' in plan.describe()
    with pytest.raises(ValueError, match='unknown convolution library'):
        ConvPlan('onednn')
    with pytest.raises(ValueError, match='unknown convolution formulation'):
        ConvPlan('xla', 'winograd')
