"""The seed's optimisers and learning-rate rule, with PyTorch's semantics.

torch applies the learning rate *after* the momentum buffer (``p -= lr * buf``),
whereas optax's ``sgd``/``rmsprop`` scale by the learning rate first and then
accumulate momentum. The two agree while the learning rate is constant and diverge
once it changes, so ``direction`` gives torch's lr-free update and the learning
rate is applied last, where a plateau schedule can change it between steps
(docs/parity.md, "Optimisers and the order of the learning rate"; "ReduceLROnPlateau").
"""

import math

import optax

# The optimisers every trainer offers (--optimizer), defined here and listed everywhere else.
OPTIMIZERS = ("sgd", "rmsprop", "adamw")

# make_optimizer's arguments other than lr, for optax.inject_hyperparams.
STATIC_HYPERPARAMS = ('name', 'momentum', 'alpha', 'eps', 'weight_decay')

# ReduceLROnPlateau's constructor arguments, saved with its progress.
_CONFIG = ('lr', 'mode', 'factor', 'patience', 'threshold', 'threshold_mode', 'cooldown', 'min_lr', 'eps')


def direction(name, momentum=0.0, alpha=0.99, eps=1e-8, weight_decay=0.0):
    """torch's update for ``lr = 1``, before the sign flip: torch steps ``p -= lr * d``.

    Args:
      name: ``'sgd'`` (``torch.optim.SGD``, dampening 0, no Nesterov: ``buf = m buf + g``),
        ``'rmsprop'`` (``torch.optim.RMSprop``, not centred:
        ``sq = alpha sq + (1 - alpha) g^2``, ``buf = m buf + g / (sqrt(sq) + eps)``)
        or ``'adamw'`` (``torch.optim.AdamW`` with its default betas (0.9, 0.999):
        ``d = m_hat / (sqrt(v_hat) + eps) + weight_decay p``; torch's ``p *= 1 - lr wd`` then
        ``p -= lr m_hat / (sqrt(v_hat) + eps)`` is the same step).
      momentum: momentum factor ``m`` (torch's default 0; not AdamW's).
      alpha: RMSprop's smoothing constant (torch's default 0.99; optax's is 0.9).
      eps: RMSprop's and Adam's term added to the root (outside it, as torch does).
      weight_decay: AdamW's decoupled decay (the others take none).

    Returns:
      An ``optax.GradientTransformation`` mapping gradients to ``d``.
    """
    # With decay 0 the trace is the identity, as torch's momentum-free step is.
    momentum_buffer = optax.trace(decay=momentum, nesterov=False)
    if name == 'sgd':
        return momentum_buffer
    if name == 'rmsprop':
        return optax.chain(
            optax.scale_by_rms(decay=alpha, eps=eps, initial_scale=0.0, eps_in_sqrt=False, bias_correction=False),
            momentum_buffer,
        )
    if name == 'adamw':
        return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=eps), optax.add_decayed_weights(weight_decay))
    raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}.")


def make_optimizer(name, lr, momentum=0.0, alpha=0.99, eps=1e-8, weight_decay=0.0):
    """torch's optimizer ``name`` at learning rate ``lr``, as an optax transformation.

    To change ``lr`` between steps the way torch's ``param_group['lr']`` does, wrap it
    in ``optax.inject_hyperparams(make_optimizer, static_args=STATIC_HYPERPARAMS)``:
    only ``lr`` then lives in the state, and the other hyperparameters stay Python
    floats as in torch (injected as float32, ``1 - alpha`` would be off by ~1e-6).
    """
    return optax.chain(direction(name, momentum, alpha, eps, weight_decay), optax.scale(-lr))


class ReduceLROnPlateau:
    """Host-side port of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (one group).

    Same arguments and defaults as torch's, with the optimizer's learning rate
    passed as ``lr``. ``step(metric)`` returns the learning rate to use next.
    """

    def __init__(
        self,
        lr,
        mode='min',
        factor=0.1,
        patience=10,
        threshold=1e-4,
        threshold_mode='rel',
        cooldown=0,
        min_lr=0.0,
        eps=1e-8,
    ):
        self.lr = float(lr)
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.eps = eps
        self._validate()
        self.best = self._worst()
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _validate(self):
        if not 0.0 <= self.factor < 1.0:
            raise ValueError(f'factor must be in [0, 1) (got {self.factor}); the rule only reduces.')
        if self.mode not in ('min', 'max'):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}.")
        if self.threshold_mode not in ('rel', 'abs'):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}.")

    def _worst(self):
        return math.inf if self.mode == 'min' else -math.inf

    def _is_better(self, metric):
        # Same expressions as torch, so ties and float rounding resolve identically.
        if self.mode == 'min' and self.threshold_mode == 'rel':
            return metric < self.best * (1.0 - self.threshold)
        if self.mode == 'min':
            return metric < self.best - self.threshold
        if self.threshold_mode == 'rel':
            return metric > self.best * (self.threshold + 1.0)
        return metric > self.best + self.threshold

    def step(self, metric):
        """Records one epoch's ``metric``; returns the (possibly reduced) learning rate."""
        metric = float(metric)
        if self._is_better(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # Bad epochs during cooldown do not count.
        if self.num_bad_epochs > self.patience:
            reduced = max(self.lr * self.factor, self.min_lr)
            # torch ignores reductions smaller than eps (lr already at min_lr).
            if self.lr - reduced > self.eps:
                self.lr = reduced
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr

    def state_dict(self):
        """Configuration and progress as plain JSON (no infinities: no best yet is None)."""
        state = {name: getattr(self, name) for name in _CONFIG}
        state.update(
            best=None if self.best == self._worst() else self.best,
            num_bad_epochs=self.num_bad_epochs,
            cooldown_counter=self.cooldown_counter,
        )
        return state

    def load_state_dict(self, state):
        """Restores ``state_dict()`` output so that a resumed run continues exactly."""
        for name in _CONFIG + ('num_bad_epochs', 'cooldown_counter'):
            setattr(self, name, state[name])
        self._validate()
        self.best = self._worst() if state['best'] is None else state['best']
