"""scripts/benchlib/profile.py: the candidate formulations are exact, the what-if swaps stay inside `with`."""

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import profile
from jaxmnist import engine, models


def test_conv_sliced_matches_xla_convolution(rng):
    x = jnp.asarray(rng.standard_normal((3, 12, 12, 4), dtype="float32"))
    k = jnp.asarray(rng.standard_normal((5, 5, 4, 6), dtype="float32"))
    ref = lambda x, k: jax.lax.conv_general_dilated(
        x,
        k,
        (1, 1),
        "VALID",  # noqa: E731
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    assert jnp.allclose(jax.jit(profile.conv_sliced)(x, k), jax.jit(ref)(x, k), atol=1e-4)  # compiled: not op by op
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
    grads = [jax.jit(jax.grad(loss(f), (0, 1)))(x, k) for f in (profile.conv_sliced, ref)]
    for a, b in zip(*grads):
        assert jnp.allclose(a, b, atol=1e-3)


def test_what_if_swaps_only_inside_the_block(rng):
    model = models.CNN(fuse_first_block=False)  # both blocks composed: two convolutions and two pools to swap
    x = jnp.asarray(rng.standard_normal((2, 28, 28, 1), dtype="float32"))
    variables = engine.init_variables(model, jax.random.PRNGKey(0))  # one program, not op by op

    def apply(variables, x):  # a fresh function each time: jax caches traces by function
        return model.apply(variables, x, train=False)

    def ops():
        return {e.primitive.name for e in jax.make_jaxpr(lambda v, x: apply(v, x))(variables, x).eqns}

    def run():  # compiled, from a fresh trace
        return jax.jit(lambda v, x: apply(v, x))(variables, x)

    plain, expected = ops(), run()
    with profile.what_if(pool=True, conv=True):
        swapped = ops()
        np.testing.assert_allclose(run(), expected, atol=1e-5)
    assert "conv_general_dilated" in plain and "conv_general_dilated" not in swapped  # convs became matmuls
    assert "reduce_window_max" not in plain and "reduce_window_max" in swapped  # pools back on reduce_window
    assert "custom_vjp_call" in plain and "custom_vjp_call" not in swapped  # max_pool_2x2's torch gradient gone
    assert ops() == plain  # restored after the block
