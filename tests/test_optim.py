"""jaxmnist.optim against torch.optim and torch's ReduceLROnPlateau."""

import json

import jax
import numpy as np
import optax
import pytest
import torch

from jaxmnist import optim

STEPS = 20
LR_CHANGE_STEP = 10  # Halve the learning rate here, as a plateau schedule would.
RTOL = 1e-6


def torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def trajectories(torch_optimizer, name, lr, hyperparams):
    """Parameters after every step of torch and of two optax set-ups fed torch's gradients.

    The optax set-ups: ``make_optimizer`` under ``inject_hyperparams`` (lr changed in
    its state) and ``direction`` with the lr applied by hand (``p -= lr * d``).
    """
    model = torch_model()
    inputs, targets = torch.randn(16, 6), torch.randn(16, 3)
    optimizer = torch_optimizer(model.parameters(), lr=lr, **hyperparams)
    injected = optax.inject_hyperparams(optim.make_optimizer, static_args=optim.STATIC_HYPERPARAMS)(
        name=name, lr=lr, **hyperparams
    )
    lr_free = optim.direction(name, **hyperparams)
    params = [p.detach().numpy().copy() for p in model.parameters()]
    injected_params, injected_state = params, injected.init(params)
    lr_free_params, lr_free_state = params, lr_free.init(params)
    history = []
    for step in range(STEPS):
        if step == LR_CHANGE_STEP:
            lr /= 2
            optimizer.param_groups[0]['lr'] = lr
            injected_state.hyperparams['lr'] = lr
        optimizer.zero_grad()
        loss = ((model(inputs) - targets) ** 2).mean() + (model[0].weight ** 4).sum()
        loss.backward()
        grads = [p.grad.numpy().copy() for p in model.parameters()]
        optimizer.step()
        updates, injected_state = injected.update(grads, injected_state, injected_params)
        injected_params = optax.apply_updates(injected_params, updates)
        directions, lr_free_state = lr_free.update(grads, lr_free_state, lr_free_params)
        lr_free_params = jax.tree.map(lambda p, d: p - lr * d, lr_free_params, directions)
        history.append(
            (
                [p.detach().numpy().copy() for p in model.parameters()],
                [np.asarray(p) for p in injected_params],
                [np.asarray(p) for p in lr_free_params],
            )
        )
    return history


@pytest.mark.parametrize(
    'torch_optimizer, name, lr, hyperparams',
    [
        (torch.optim.SGD, 'sgd', 0.04, dict(momentum=0.5)),
        (torch.optim.SGD, 'sgd', 0.04, dict()),
        (torch.optim.RMSprop, 'rmsprop', 1e-3, dict(alpha=0.99, eps=1e-8, momentum=0.5)),
        (torch.optim.RMSprop, 'rmsprop', 1e-3, dict()),
        (torch.optim.AdamW, 'adamw', 1e-2, dict(eps=1e-8, weight_decay=5e-2)),
    ],
)
def test_matches_torch_across_lr_change(torch_optimizer, name, lr, hyperparams):
    # Adam divides each moment by the root of another, and torch and optax round sqrt(v / (1 - b2^t)) differently
    # (torch: sqrt(v) / sqrt(1 - b2^t)): float32 ulps, 10x larger after the division than SGD's or RMSprop's.
    rtol = 1e-5 if name == 'adamw' else RTOL
    history = trajectories(torch_optimizer, name, lr, hyperparams)
    moved = np.max([np.abs(a - b).max() for a, b in zip(history[-1][0], history[0][0])])
    assert moved > 0.05  # Parameters move far beyond the tolerance.
    for step, (expected, *candidates) in enumerate(history):
        for params in candidates:
            for actual, wanted in zip(params, expected):
                np.testing.assert_allclose(
                    actual, wanted, rtol=rtol, atol=rtol * np.abs(wanted).max(), err_msg=f'step {step}'
                )


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match='sgd, rmsprop'):
        optim.direction('adam')
    with pytest.raises(ValueError, match='adam'):
        optim.make_optimizer('adam', 0.1)


def metric_sequence(seed, n=400):
    """Accuracy-like values on a 1e-4 grid: slow gains, long plateaus, exact ties, dips."""
    rng = np.random.default_rng(seed)
    gains = rng.choice([0.0, 0.0, 0.0, 1e-4, 3e-4, 2e-3, -1e-3], size=n)
    metric = np.round(0.9 + np.cumsum(gains), 4)
    plateau = rng.integers(0, n - 30)
    metric[plateau : plateau + 30] = metric[plateau]
    return [float(m) for m in metric]


PLATEAU_CONFIGS = [
    dict(lr=1e-3, mode='max', factor=0.5, patience=3, threshold=5e-5),  # the seed's §4
    dict(lr=0.1, mode='max', factor=0.5, patience=2, threshold=1e-3, threshold_mode='abs', cooldown=2),
    dict(lr=0.1, mode='min', factor=0.3, patience=1, threshold=1e-4, min_lr=0.013),
    dict(lr=0.1, mode='min', factor=0.5, patience=0, threshold=2e-3, threshold_mode='abs', cooldown=3, min_lr=1e-3),
    dict(lr=1.0, factor=0.0, patience=4, min_lr=1e-9),  # torch's defaults otherwise
]


def torch_scheduler(lr, **config):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **config)


@pytest.mark.parametrize('config', PLATEAU_CONFIGS)
@pytest.mark.parametrize('seed', [0, 1])
def test_plateau_matches_torch(config, seed):
    metrics = metric_sequence(seed)
    # Minimising runs see a loss-like sequence with the same ties.
    if config.get('mode', 'min') == 'min':
        metrics = [1.0 - m for m in metrics]
    torch_optimizer, reference = torch_scheduler(**config)
    scheduler = optim.ReduceLROnPlateau(**config)
    resumed = None
    lrs = []
    for epoch, metric in enumerate(metrics):
        if epoch == len(metrics) // 2:
            # A JSON round trip mid-run, as a resumed training run would do.
            resumed = optim.ReduceLROnPlateau(lr=123.0)
            resumed.load_state_dict(json.loads(json.dumps(scheduler.state_dict(), allow_nan=False)))
        reference.step(metric)
        lr = torch_optimizer.param_groups[0]['lr']
        lrs.append(lr)
        for ours in filter(None, (scheduler, resumed)):
            assert ours.step(metric) == lr == ours.lr, f'epoch {epoch}'
            assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter) == (
                reference.best,
                reference.num_bad_epochs,
                reference.cooldown_counter,
            ), f'epoch {epoch}'
    assert len(set(lrs)) >= 2, f'no reduction to test: {lrs[0]}'


def test_plateau_state_dict_before_first_step_is_json():
    scheduler = optim.ReduceLROnPlateau(lr=0.1, mode='max')
    state = json.loads(json.dumps(scheduler.state_dict(), allow_nan=False))
    restored = optim.ReduceLROnPlateau(lr=1.0)
    restored.load_state_dict(state)
    assert restored.best == -float('inf') and restored.mode == 'max' and restored.lr == 0.1


@pytest.mark.parametrize(
    'bad, match',
    [
        (dict(factor=1.0), 'factor'),
        (dict(factor=-0.5), 'factor'),
        (dict(mode='maximum'), 'mode'),
        (dict(threshold_mode='relative'), 'threshold_mode'),
    ],
)
def test_plateau_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        optim.ReduceLROnPlateau(lr=0.1, **bad)
