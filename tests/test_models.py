"""jaxmnist.models against torch_ref.models: sizes, outputs, gradients, BatchNorm statistics, init.

Training-mode comparisons run with dropout off on both sides (torch: the Dropout submodules in
eval(); flax: cnn_deep's dropout rates set to 0), so BatchNorm uses batch statistics while the
outputs stay deterministic.

torchvision's ResNets are compared in float64. In float32, torch's own logits differ from its
float64 logits by ~2e-5 (resnet18) and ~2e-3 (resnet101), eval or training mode alike: on 28x28
inputs the statistics of the deepest BatchNorms come from a handful of values per channel (batch x
1x1 or 2x2), and rounding is amplified past any float32 tolerance between two frameworks.
test_float32_error_is_torchs shows, on resnet18,
that flax's float32 logits are as close to that float64 reference as torch's float32 logits are
(resnet101 behaves the same; at ~20 s of compilation it is left out).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import flat, init_shapes, torch_model_holding
from torch import nn

from jaxmnist import convs, engine, layers, models
from torch_ref import convert
from torch_ref import models as torch_models

torch.set_default_dtype(torch.float32)

PARAM_COUNTS = {
    'cnn': 8_550,
    'cnn_deep': 232_554,
    'resnet': 598_442,
    'resnet18': 11_689_512,
    'resnet101': 44_549_160,
    'fast': 104_426,
}
BLOG_BN_STAT_COUNTS = {'cnn': 60, 'cnn_deep': 384, 'resnet': 1_120}
# resnet101 shares every initialiser and layer type with resnet18; its init alone would take 20 s.
INIT_CHECKED = ['cnn', 'cnn_deep', 'resnet', 'resnet18', 'fast']
# Float64 where float32 rounding is amplified past any cross-framework tolerance (module docstring).
PARITY_DTYPE = {'resnet18': 'float64', 'resnet101': 'float64', 'bottleneck_resnet': 'float64'}  # Others: float32.
LOGIT_TOL = {'float32': 1e-5, 'float64': 1e-9}  # max |logits difference|
GRAD_TOL = {'float32': 1e-4, 'float64': 1e-8}  # max |gradient difference| / max |torch gradient|
NO_DROPOUT = {'cnn_deep': {'conv_dropout_rate': 0.0, 'fc_dropout_rate': 0.0}}

ALL = list(PARAM_COUNTS)
# resnet101's parity is checked on its reduced twin: torchvision's ResNet with one Bottleneck block a stage
# instead of (3, 4, 23, 3). It holds every layer type, block and downsampling path of resnet101 at the same
# spatial sizes (1x1 maps in layer4); resnet101's 33 blocks repeat these four blocks' code. Its two tests take 8 s
# instead of 88 s here. resnet101's own names, shapes and weight transfer: test_sizes_agree_between_frameworks,
# tests/test_torch_ref_convert.py.
PARITY = ['cnn', 'cnn_deep', 'resnet', 'resnet18', 'bottleneck_resnet', 'fast']
REDUCED = (1, 1, 1, 1)


@pytest.fixture
def bottleneck_resnet(monkeypatch):
    """Registers the reduced resnet101 in both frameworks' lists for the length of a test."""
    twin = functools.partial(models.ResNet101, stage_sizes=REDUCED)
    monkeypatch.setitem(models.MODELS, 'bottleneck_resnet', twin)
    monkeypatch.setitem(models.TORCHVISION, 'bottleneck_resnet', twin)
    builder = functools.partial(torchvision.models.resnet.ResNet, torchvision.models.resnet.Bottleneck, list(REDUCED))
    monkeypatch.setattr(torchvision.models, 'bottleneck_resnet', builder, raising=False)


def rbg_key(seed):
    """A key of XLA's RngBitGenerator: same distributions, a third of threefry's compile time here."""
    return jax.random.key(seed, impl='rbg')


@functools.lru_cache(maxsize=None)
def initialised(name):
    """Fresh flax variables of ``name``, shared by the tests (XLA compiles dominate their time): the program
    engine.create_state runs, so that the suite compiles each network's initialisation once."""
    return engine.init_variables(models.get_model(name), jax.random.PRNGKey(0))


def inputs(batch, seed, dtype=torch.float32):
    """A standard-normal batch as torch NCHW and as flax NHWC."""
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x, x.permute(0, 2, 3, 1).numpy()


def random_labels(batch, num_classes, seed):
    return torch.randint(num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def calibrated_state(name):
    """A torch_ref state_dict whose BatchNorms hold one batch's statistics and random affines.

    Fresh running statistics (0, 1) and affines (1, 0) would leave the transfer of those tensors and
    of the unbiased variance untested, and leave deep nets' eval-mode activations unnormalised.
    """
    torch.manual_seed(0)
    model = torch_models.get_model(name)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    batch_norms = [m for m in norms if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
        for m in batch_norms:
            m.momentum = 1.0  # The running statistics become this batch's.
        model.train()
        model(torch_models.prepare_input(name, inputs(8, seed=100)[0]))
    return model.state_dict()


def calibrated_torch_model(name):
    state = {key: tensor.clone() for key, tensor in calibrated_state(name).items()}
    return torch_model_holding(name, state)


def flax_model(name, dtype=jnp.float32):
    return models.get_model(name, dtype=dtype).clone(**NO_DROPOUT.get(name, {}))


def torch_training_step(name, model, x, labels):
    """Training-mode logits, loss gradients (flax layout) and updated running stats, dropout off."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    logits = model(torch_models.prepare_input(name, x))
    F.cross_entropy(logits, labels).backward()
    grads = dict(model.state_dict())
    grads.update({key: p.grad for key, p in model.named_parameters()})
    batch_stats = convert.torch_to_flax(name, model.state_dict())['batch_stats']
    return logits.detach().numpy(), convert.torch_to_flax(name, grads)['params'], batch_stats


def flax_training_step(model, variables, x, labels):
    def loss_fn(params):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True, mutable=['batch_stats']
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates['batch_stats'])

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (_, (logits, batch_stats)), grads = step(variables['params'])
    return np.asarray(logits), grads, batch_stats


def gradient_errors(torch_grads, flax_grads):
    """max|diff| / max|torch grad| per parameter.

    A bias feeding straight into a training-mode BatchNorm (the blog ResNet's convs) has an exactly
    zero gradient, so only rounding noise is left to compare: such parameters must be numerically
    zero (< 1e-5 of the model's largest gradient) in both frameworks and are measured against that
    largest gradient instead.
    """
    torch_flat, flax_flat = flat(torch_grads), flat(flax_grads)
    scale = max(np.abs(g).max() for g in torch_flat.values())
    errors = {}
    for path, torch_grad in torch_flat.items():
        flax_grad = np.asarray(flax_flat[path])
        diff = np.abs(torch_grad - flax_grad).max()
        largest = np.abs(torch_grad).max()
        if largest < 1e-5 * scale:
            assert np.abs(flax_grad).max() < 1e-5 * scale, path
            largest = scale
        errors['/'.join(path)] = diff / largest
    return errors


@pytest.mark.parametrize('name', ALL)
def test_sizes_agree_between_frameworks(name):
    variables = init_shapes(name)
    flax_params = sum(x.size for x in jax.tree.leaves(variables['params']))
    flax_stats = sum(x.size for x in jax.tree.leaves(variables['batch_stats']))
    with torch.device('meta'):  # Counting needs shapes only.
        torch_model = torch_models.get_model(name)
    torch_params = sum(p.numel() for p in torch_model.parameters())
    torch_stats = sum(b.numel() for key, b in torch_model.named_buffers() if 'running_' in key)
    assert flax_params == torch_params == PARAM_COUNTS[name]
    assert flax_stats == torch_stats == BLOG_BN_STAT_COUNTS.get(name, torch_stats)


def flax_logits(model, variables, x, train):
    if train:
        return np.asarray(jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(variables, x)[0])
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))


@pytest.mark.usefixtures('bottleneck_resnet')
@pytest.mark.parametrize('name', PARITY)
def test_eval_logits_agree(name):
    dtype = PARITY_DTYPE.get(name, 'float32')
    model = calibrated_torch_model(name).to(getattr(torch, dtype)).eval()
    variables = convert.torch_to_flax(name, model.state_dict())
    x, x_nhwc = inputs(2, seed=1, dtype=getattr(torch, dtype))
    with torch.no_grad():
        expected = model(torch_models.prepare_input(name, x)).numpy()
    with jax.enable_x64(dtype == 'float64'):
        logits = flax_logits(flax_model(name, getattr(jnp, dtype)), variables, x_nhwc, train=False)
    assert np.abs(logits - expected).max() <= LOGIT_TOL[dtype]


@pytest.mark.usefixtures('bottleneck_resnet')
@pytest.mark.parametrize('name', PARITY)
def test_training_logits_gradients_and_batch_stats_agree(name):
    dtype = PARITY_DTYPE.get(name, 'float32')
    model = calibrated_torch_model(name).to(getattr(torch, dtype))
    variables = convert.torch_to_flax(name, model.state_dict())
    # Batch 4: with 2, resnet101's (and its twin's) 1x1 layer4 BatchNorms see 2 values a channel, and even float64
    # logits then differ by 1e-4.
    x, x_nhwc = inputs(4, seed=2, dtype=getattr(torch, dtype))
    labels = random_labels(4, models.get_model(name).num_classes, seed=3)

    torch_logits, torch_grads, torch_stats = torch_training_step(name, model, x, labels)
    with jax.enable_x64(dtype == 'float64'):
        logits, grads, batch_stats = flax_training_step(
            flax_model(name, getattr(jnp, dtype)), variables, x_nhwc, labels.numpy()
        )

    assert np.abs(logits - torch_logits).max() <= LOGIT_TOL[dtype]
    errors = gradient_errors(torch_grads, grads)
    assert max(errors.values()) <= GRAD_TOL[dtype], sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    for path, torch_stat in flat(torch_stats).items():
        np.testing.assert_allclose(
            flat(batch_stats)[path], torch_stat, rtol=LOGIT_TOL[dtype], atol=LOGIT_TOL[dtype], err_msg='/'.join(path)
        )


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_float32_error_is_torchs(train, name='resnet18'):
    model = calibrated_torch_model(name).train(train)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    variables = convert.torch_to_flax(name, model.state_dict())
    x, x_nhwc = inputs(8, seed=2)
    with torch.no_grad():
        torch32 = model(torch_models.prepare_input(name, x)).numpy()
        reference = model.double()(torch_models.prepare_input(name, x.double())).numpy()
    logits = flax_logits(flax_model(name), variables, x_nhwc, train)
    assert np.abs(logits - reference).max() <= 2 * np.abs(torch32 - reference).max()


def torch_fan_in(path, torch_variables):
    kernel = flat(torch_variables)[('params', *path[1:-1], 'kernel')]
    return int(np.prod(kernel.shape[:-1]))


def kurtosis(x):
    x = x - x.mean()
    return (x**4).mean() / (x**2).mean() ** 2


@pytest.mark.parametrize('name', INIT_CHECKED)
def test_init_matches_torch_in_distribution(name):
    torch.manual_seed(0)
    torch_variables = convert.torch_to_flax(name, torch_models.get_model(name).state_dict())
    flax_flat = flat(initialised(name))
    for path, expected in flat(torch_variables).items():
        ours = np.asarray(flax_flat[path])
        is_norm = path[0] == 'batch_stats' or ('params', *path[1:-1], 'scale') in flax_flat
        if is_norm:  # BatchNorm and LayerNorm start at constants.
            assert np.array_equal(ours, expected), path
        elif path[-1] == 'bias':  # U(+-1/sqrt(fan_in)), fan_in from its layer's weight.
            bound = 1 / np.sqrt(torch_fan_in(path, torch_variables))
            assert np.abs(expected).max() <= bound and np.abs(ours).max() <= bound, path
            if ours.size >= 100:
                assert np.abs(ours).max() >= 0.9 * bound, path
        if ours.size >= 4000 and not is_norm:
            assert ours.std() == pytest.approx(expected.std(), rel=0.05), path
            assert abs(ours.mean()) <= 0.05 * expected.std(), path
            assert kurtosis(ours) == pytest.approx(kurtosis(expected), abs=0.3), path  # uniform vs normal


def test_cnn_deep_convs_are_kaiming_fan_out():
    checked = 0
    for path, kernel in flat(initialised('cnn_deep')['params']).items():
        if path[-1] == 'kernel' and kernel.ndim == 4 and kernel.size >= 4000:
            kh, kw, _, out_channels = kernel.shape
            assert np.std(kernel) == pytest.approx(np.sqrt(2 / (out_channels * kh * kw)), rel=0.05), path
            checked += 1
    assert checked == 3  # layer1_3, layer2_0, layer2_3; layer1_0 has 800 elements.


def test_batchnorm_is_torchs_batchnorm2d():
    torch_bn = nn.BatchNorm2d(6)
    bn = layers.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.zeros((1, 5, 5, 6)))
    train = jax.jit(functools.partial(bn.apply, mutable=['batch_stats']))  # compiled, as in training
    for step in range(3):
        x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(step)) * 3 + 2
        expected = torch_bn(x).detach().permute(0, 2, 3, 1).numpy()
        y, updates = train(variables, x.permute(0, 2, 3, 1).numpy())
        variables = {**variables, **updates}
        np.testing.assert_allclose(y, expected, atol=2e-6)
    np.testing.assert_allclose(variables['batch_stats']['mean'], torch_bn.running_mean, rtol=1e-6)
    np.testing.assert_allclose(variables['batch_stats']['var'], torch_bn.running_var, rtol=1e-6)

    torch_bn.eval()
    x = torch.randn(2, 6, 5, 5)
    expected = torch_bn(x).detach().permute(0, 2, 3, 1).numpy()
    y = jax.jit(bn.clone(use_running_average=True).apply)(variables, x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(y, expected, atol=2e-6)


def test_torchvision_max_pool_pads_with_minus_infinity():
    pooled = layers.max_pool(-jnp.ones((1, 4, 4, 1)), 3, 2, padding=1)
    assert pooled.shape == (1, 2, 2, 1)
    assert np.all(pooled == -1)


def test_dropout_follows_train_and_needs_an_rng_only_when_active():
    model = models.get_model('cnn_deep')
    variables = initialised('cnn_deep')
    x = inputs(2, seed=0)[1]

    @jax.jit
    def train(key):
        return model.apply(variables, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])[0]

    first = train(rbg_key(1))
    assert np.array_equal(first, train(rbg_key(1)))
    assert not np.allclose(first, train(rbg_key(2)))
    with pytest.raises(Exception, match='dropout'):  # traced, not run op by op up to the first dropout
        jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(variables, x)
    without_dropout = flax_logits(flax_model('cnn_deep'), variables, x, train=True)
    assert not np.allclose(without_dropout, first)
    # Eval mode needs no rng and draws no dropout: it equals the same network without dropout layers.
    evaluate = jax.jit(functools.partial(model.apply, train=False))
    assert np.array_equal(evaluate(variables, x), flax_logits(flax_model('cnn_deep'), variables, x, train=False))


def test_get_model():
    assert models.get_model('resnet').num_classes == 10
    assert models.get_model('resnet18').num_classes == 1000
    assert models.get_model('resnet18', num_classes=10).num_classes == 10
    assert set(models.MODELS) == set(PARAM_COUNTS)
    with pytest.raises(ValueError, match='unknown model'):
        models.get_model('resnet50')


@pytest.mark.parametrize('name, num_classes', [('cnn', 10), ('resnet18', 1000)])
def test_output_shape_and_three_channel_input(name, num_classes):
    model = models.get_model(name)
    x = inputs(2, seed=0)[1]
    logits = flax_logits(model, initialised(name), x, train=False)
    assert logits.shape == (2, num_classes)
    if name == 'resnet18':  # The repeat inside the model is the blog's expand outside it.
        assert initialised(name)['params']['conv1']['kernel'].shape == (7, 7, 3, 64)
        assert np.array_equal(logits, flax_logits(model, initialised(name), np.repeat(x, 3, -1), train=False))


def test_bfloat16_computation_keeps_float32_state():
    model = models.get_model('cnn', dtype=jnp.bfloat16)
    x = inputs(4, seed=0)[1]
    variables = initialised('cnn')
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(variables, x)
    assert logits.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updates))
    reference = flax_logits(models.get_model('cnn'), variables, x, train=False)
    low = flax_logits(model, variables, x, train=False).astype(np.float32)
    np.testing.assert_allclose(low, reference, atol=0.05 * np.abs(reference).max())


def test_max_pool_2x2_routes_gradients_like_torch(rng):
    """Forward equals MaxPool2d(2); the gradient goes to the first maximum of each window, ties included."""
    x = rng.integers(0, 3, (2, 9, 8, 3)).astype("float32")  # small integers: many ties; odd height is floored
    g = rng.standard_normal((2, 4, 4, 3)).astype("float32")

    @jax.jit  # one program, as in training (op by op: a few dozen small compiles)
    def forward_and_gradient(x, g):
        out, vjp = jax.vjp(layers.max_pool_2x2, x)
        return out, vjp(g)[0]

    out, grad = forward_and_gradient(jnp.asarray(x), jnp.asarray(g))
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    ref = torch.nn.functional.max_pool2d(xt, 2)
    ref.backward(torch.tensor(g).permute(0, 3, 1, 2))
    assert (out == ref.detach().permute(0, 2, 3, 1).numpy()).all()
    assert (grad == xt.grad.permute(0, 2, 3, 1).numpy()).all()


def test_fused_first_stage_is_the_composed_layers(rng):
    """stage_1ch_train is conv -> BatchNorm (batch statistics) -> ReLU -> max-pool composed (itself torch's, above):
    its three outputs and the gradients of all four inputs, with cotangents on the batch statistics too (float64:
    the sums are only reordered, so 1e-10). stage_1ch_eval is the same layers on running statistics."""
    x = rng.standard_normal((3, 8, 6, 1))
    x[0, :2, :2] = 0.5  # a window of ties: the gradient goes to its first pixel
    kernel, scale, bias = rng.standard_normal((3, 3, 1, 5)), rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
    with jax.enable_x64():
        args = tuple(map(jnp.asarray, (x, kernel, scale, bias)))
        cotangents = tuple(jnp.asarray(rng.standard_normal(s)) for s in ((3, 4, 3, 5), (5,), (5,)))

        @functools.partial(jax.jit, static_argnums=0)  # one program each: op by op, dozens of small compiles
        def outputs_and_grads(stage, args, cotangents):
            out, vjp = jax.vjp(lambda *a: stage(*a, 1e-5), *args)
            return *out, *vjp(cotangents)

        fused = outputs_and_grads(layers.stage_1ch_train, args, cotangents)
        composed = outputs_and_grads(layers.stage_1ch_reference, args, cotangents)
        assert [o.shape for o in composed[:3]] == [c.shape for c in cotangents]
        for got, want in zip(fused, composed, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        mean, var = jnp.asarray(rng.standard_normal(5)), jnp.asarray(rng.uniform(0.5, 2, 5))

        @jax.jit
        def eval_both(x, kernel, scale, bias, mean, var):
            y = (convs.lax_conv(x, kernel, 1, 1) - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
            return layers.stage_1ch_eval(x, kernel, scale, bias, mean, var, 1e-5), layers.max_pool_2x2(jax.nn.relu(y))

        np.testing.assert_allclose(*eval_both(*args, mean, var), rtol=1e-10, atol=1e-10)


def test_cnns_fused_first_block_is_the_composed_layers(rng):
    """conv_pool_1ch is conv (unpadded, biased) -> max-pool -> ReLU composed (each torch's, above): its output and
    the gradients of all three inputs (float64: the sums are only reordered, so 1e-10), on sizes whose
    convolution output is even but not square, with a window of ties (a constant patch: four equal outputs)."""
    x = rng.standard_normal((3, 8, 10, 1))
    x[0, :4, :4] = 0.5  # the 3x3 convolution's first 2x2 window: four equal outputs, the first one wins
    kernel, bias = rng.standard_normal((3, 3, 1, 5)), rng.standard_normal(5)
    with jax.enable_x64():
        args = tuple(map(jnp.asarray, (x, kernel, bias)))
        cotangent = jnp.asarray(rng.standard_normal((3, 3, 4, 5)))

        @functools.partial(jax.jit, static_argnums=0)
        def output_and_grads(block, args, cotangent):
            out, vjp = jax.vjp(block, *args)
            return out, *vjp(cotangent)

        fused = output_and_grads(layers.conv_pool_1ch, args, cotangent)
        composed = output_and_grads(layers.conv_pool_1ch_reference, args, cotangent)
        assert composed[0].shape == cotangent.shape and (composed[2] != 0).any()
        for got, want in zip(fused, composed, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize(
    'network, switch, fused_fns',
    [
        ('fast', 'fuse_first_stage', ('stage_1ch_train', 'stage_1ch_eval')),
        ('cnn', 'fuse_first_block', ('conv_pool_1ch',)),
    ],
)
def test_networks_run_their_first_layers_fused(network, switch, fused_fns, train, monkeypatch):
    """FastNet and the cnn take their fused path (so the torch parity tests above check it), and agree with their
    composed layers: logits and running statistics (float32: LOGIT_TOL)."""
    calls = []
    for fn in fused_fns:
        monkeypatch.setattr(models, fn, functools.partial(lambda f, *a: calls.append(f) or f(*a), getattr(models, fn)))
    variables, x = initialised(network), inputs(4, seed=0)[1]

    def run(fuse):  # jitted: one program instead of many small ones; `calls` records what was traced
        model = models.MODELS[network](**{switch: fuse})
        return jax.jit(functools.partial(model.apply, train=train, mutable=['batch_stats']))(variables, x)

    (fused, fused_stats), (composed, composed_stats) = run(True), run(False)
    assert len(calls) == 1
    np.testing.assert_allclose(fused, composed, atol=LOGIT_TOL['float32'])
    for got, want in zip(jax.tree.leaves(fused_stats), jax.tree.leaves(composed_stats)):
        np.testing.assert_allclose(got, want, rtol=LOGIT_TOL['float32'], atol=LOGIT_TOL['float32'])
