"""jaxmnist.augment against torchvision's PIL transforms on identical parameters."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from jaxmnist import augment

NEAREST = InterpolationMode.NEAREST


@pytest.fixture(scope='module')
def images():
    """MNIST-like uint8 images: blurred drawn digits, soft random blobs, and noise.

    The noise image makes every wrongly chosen source pixel visible.
    """
    rng = np.random.default_rng(0)
    font = ImageFont.load_default(size=20)
    digits = []
    for digit in range(10):
        canvas = Image.new('L', (28, 28))
        centre = tuple(int(c) for c in rng.integers(11, 18, 2))
        ImageDraw.Draw(canvas).text(
            centre, str(digit), fill=255, font=font, anchor='mm', stroke_width=1, stroke_fill=255
        )
        digits.append(np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.8))))
    rows, cols = np.mgrid[:28, :28]
    blobs = []
    for _ in range(5):
        density = np.zeros((28, 28))
        for cy, cx, radius in rng.uniform((4, 4, 1.5), (24, 24, 4), (6, 3)):
            density += np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * radius**2))
        blobs.append(np.clip(density * 255, 0, 255).astype(np.uint8))
    noise = [rng.integers(0, 256, (28, 28), dtype=np.uint8)]
    return np.stack(digits + blobs + noise)


def torchvision_warp(image, tx, ty, angle, scale=1.0):
    """The seed's pipeline on fixed parameters: RandomAffine's then RandomRotation's op."""
    pil = Image.fromarray(image)
    shifted = F.affine(
        pil, angle=0.0, translate=[int(tx), int(ty)], scale=float(scale), shear=[0.0, 0.0], interpolation=NEAREST,
        fill=0,
    )
    return np.asarray(F.rotate(shifted, float(angle), NEAREST, fill=0))


def test_translations_pixel_exact(images):
    shifts = list(itertools.product(range(-3, 4), repeat=2))
    batch = np.repeat(images, len(shifts), axis=0)
    tx, ty = (np.tile(np.array(axis, np.int32), len(images)) for axis in zip(*shifts))
    angle = np.zeros(len(batch), np.float32)
    ours = np.asarray(jax.jit(augment.warp)(batch, tx, ty, angle))
    expected = np.stack([torchvision_warp(*args) for args in zip(batch, tx, ty, angle)])
    np.testing.assert_array_equal(ours, expected)


def test_rotations_match_torchvision(images):
    edge_angles = [-10.0, -9.999, -5.0, -1e-3, 0.0, 1e-3, 0.5, 5.0, 9.999, 10.0]
    random_angles = np.random.default_rng(1).uniform(-10, 10, 1200)
    angle = np.concatenate([edge_angles, random_angles]).astype(np.float32)
    batch = images[np.arange(len(angle)) % len(images)]
    zeros = np.zeros(len(angle), np.int32)
    ours = np.asarray(jax.jit(augment.warp)(batch, zeros, zeros, angle))
    expected = np.stack([torchvision_warp(*args) for args in zip(batch, zeros, zeros, angle)])
    agreement = np.mean(ours == expected)
    # PIL steps through the image in 16.16 fixed point, rounded from float64; warp rounds
    # the same steps from float32, so a boundary pixel may rarely differ (measured: none).
    assert agreement >= 0.999, f'{agreement:.6%} of {ours.size} rotated pixels agree'


@pytest.mark.parametrize("translate, degrees", [(0.1, 10.0), (0.2, 20.0)])  # §4's, and --translate/--degrees
def test_matches_random_affine_then_random_rotation(images, translate, degrees):
    """Same draws as torchvision's transforms, consumed in their order, then compared."""
    pipeline = transforms.Compose(
        [
            transforms.RandomAffine(degrees=0, translate=(translate, translate)),
            transforms.RandomRotation((-degrees, degrees)),
        ]
    )
    params, expected = [], []
    for seed in range(200):
        image = images[seed % len(images)]
        torch.manual_seed(seed)
        ranges = [translate, translate]
        _, (tx, ty), _, _ = transforms.RandomAffine.get_params([0.0, 0.0], ranges, None, None, [28, 28])
        angle = transforms.RandomRotation.get_params([-degrees, degrees])
        params.append((tx, ty, angle))
        torch.manual_seed(seed)
        expected.append(np.asarray(pipeline(Image.fromarray(image))))
    tx, ty, angle = (np.array(p) for p in zip(*params))
    batch = images[np.arange(len(params)) % len(images)]
    ours = np.asarray(jax.jit(augment.warp)(batch, tx, ty, angle.astype(np.float32)))
    agreement = np.mean(ours == np.stack(expected))
    assert agreement >= 0.999, f'{agreement:.6%} of pixels agree with the torchvision pipeline'


def test_scaled_shifts_then_rotations_match_torchvision(images):
    """`warp`'s scale: RandomAffine(scale=...)'s op, PIL's scaling path, before the rotation. The scales include
    the edges of --scale 0.1 and 0.2 and 1 itself (where it must be the unscaled warp, bit for bit)."""
    rng = np.random.default_rng(2)
    n = 1200
    edges = np.array([0.8, 0.9, 1.0, 1.1, 1.2, 0.95, 1.05])
    scale = np.concatenate([edges, rng.uniform(0.8, 1.2, n - len(edges))]).astype(np.float32)
    tx, ty = rng.integers(-3, 4, (2, n)).astype(np.int32)
    angle = rng.uniform(-10, 10, n).astype(np.float32)
    batch = images[np.arange(n) % len(images)]
    ours = np.asarray(jax.jit(augment.warp)(batch, tx, ty, angle, scale))
    expected = np.stack([torchvision_warp(*args) for args in zip(batch, tx, ty, angle, scale)])
    # PIL accumulates the scaled steps in float64, warp computes them in float32: a source index may differ
    # where a step falls within about 1e-6 of an integer (measured: none in 2,000 MNIST digits).
    agreement = np.mean(ours == expected)
    assert agreement >= 0.999, f'{agreement:.6%} of {ours.size} scaled pixels agree'
    assert not np.array_equal(ours, np.asarray(jax.jit(augment.warp)(batch, tx, ty, angle)))  # it does scale
    unit, warp = np.ones(n, np.float32), jax.jit(augment.warp)
    np.testing.assert_array_equal(np.asarray(warp(batch, tx, ty, angle, unit)), np.asarray(warp(batch, tx, ty, angle)))


def test_a_scale_keeps_the_other_draws_and_is_uniform(images):
    """augment's scales come from a key of their own: the shifts and angles of a batch are those drawn without
    one, so a run without --scale trains on the images it always did; the scales are U(1 - s, 1 + s)."""

    @jax.jit  # one program, as training runs them (op by op: 59 small programs to compile)
    def both_ways(key, raw):
        params = augment.sample_params(key, len(raw))
        scales = augment.sample_scales(jax.random.fold_in(key, 3), len(raw), 0.1)
        unscaled = augment.augment(key, raw), augment.warp(raw, *params)
        return unscaled, (augment.augment(key, raw, augment.Warp(scale=0.1)), augment.warp(raw, *params, scales))

    for got, expected in both_ways(jax.random.key(3), jnp.asarray(images)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    n = 200_000
    s = np.sort(np.asarray(augment.sample_scales(jax.random.key(4), n, 0.1), np.float64))
    assert 0.9 <= s[0] and s[-1] <= 1.1
    cdf = (s - 0.9) / 0.2
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 0.005, f'KS distance {ks:.5f}'  # as for the angles: ~2.2 sqrt(1/n), p ~ 1e-4


def test_shift_distribution():
    """round(U(-2.8, 2.8)): {-2..2} each have probability 1/5.6, and +-3 have 0.3/5.6."""
    n = 200_000
    tx, ty, _ = augment.sample_params(jax.random.key(0), n)
    support = np.arange(-3, 4)
    probability = np.array([0.3, 1, 1, 1, 1, 1, 0.3]) / 5.6
    # Five binomial standard deviations per value: a false alarm is ~1e-6 per value.
    tolerance = 5 * np.sqrt(probability * (1 - probability) / n)
    for shifts in (tx, ty):
        shifts = np.asarray(shifts)
        assert shifts.dtype == np.int32 and set(np.unique(shifts)) <= set(support)
        frequency = np.array([np.mean(shifts == k) for k in support])
        assert np.all(np.abs(frequency - probability) <= tolerance), (frequency, probability, tolerance)


def test_wider_ranges_scale_the_same_draws():
    """Warp(translate, degrees): the §4 draws' uniforms over other bounds, so a key's angles are twice as large at
    20°, and the shifts reach round(U(-5.6, 5.6)): -6..6."""
    key, wider = jax.random.key(5), augment.Warp(translate=0.2, degrees=20.0)
    tx, ty, angle = (np.asarray(a) for a in augment.sample_params(key, 20_000, ranges=wider))
    np.testing.assert_allclose(angle, 2 * np.asarray(augment.sample_params(key, 20_000)[2]), rtol=1e-6)
    assert np.abs(angle).max() <= 20 and np.abs(angle).max() > 19.9
    for shifts in (tx, ty):
        assert set(np.unique(shifts)) == set(range(-6, 7))


def test_angles_uniform():
    n = 200_000
    _, _, angle = augment.sample_params(jax.random.key(1), n)
    angle = np.sort(np.asarray(angle, np.float64))
    assert -10 <= angle[0] and angle[-1] <= 10
    # Kolmogorov-Smirnov distance to U(-10, 10); 0.005 is ~2.2 sqrt(1/n), p ~ 1e-4.
    uniform_cdf = (angle + 10) / 20
    ks = max(np.max(np.arange(1, n + 1) / n - uniform_cdf), np.max(uniform_cdf - np.arange(n) / n))
    assert ks < 0.005, f'KS distance {ks:.5f}'


def test_augment_jit_vmap_shapes_and_dtypes(images):
    raw = jnp.asarray(images[:8])
    key = jax.random.key(2)
    augment_jit = jax.jit(augment.augment)
    to_float = jax.jit(lambda pixels: pixels.astype(jnp.float32) / 255)
    out_uint8 = augment_jit(key, raw)
    out_float = augment_jit(key, to_float(raw))
    assert out_uint8.shape == out_float.shape == raw.shape
    assert out_uint8.dtype == jnp.uint8 and out_float.dtype == jnp.float32
    # A gather never mixes pixels: the float path is the uint8 path rescaled.
    np.testing.assert_array_equal(np.asarray(out_float), np.asarray(to_float(out_uint8)))
    keys = jax.random.split(key, 3)
    stacked = jax.jit(jax.vmap(augment.augment, in_axes=(0, None)))(keys, raw)
    assert stacked.shape == (3,) + raw.shape
    np.testing.assert_array_equal(np.asarray(stacked[1]), np.asarray(augment_jit(keys[1], raw)))
    assert not np.array_equal(np.asarray(stacked[0]), np.asarray(stacked[1]))


def torchvision_elastic(images, noise, alpha, sigma):
    """torchvision's ElasticTransform on fixed uniform draws: get_params's blur and scaling, then
    F.elastic_transform (bilinear, fill 0), one image at a time as the dataset applies it."""
    taps = int(8 * sigma + 1) | 1
    out, displacements = [], []
    for image, (dx, dy) in zip(images, torch.from_numpy(noise)):
        dx = F.gaussian_blur(dx[None, None], [taps, taps], [sigma, sigma]) * alpha / image.shape[1]
        dy = F.gaussian_blur(dy[None, None], [taps, taps], [sigma, sigma]) * alpha / image.shape[0]
        displacement = torch.concat([dx, dy], 1).permute([0, 2, 3, 1])
        displacements.append(displacement[0].numpy())
        tensor = torch.from_numpy(image)[None]
        out.append(F.elastic_transform(tensor, displacement, InterpolationMode.BILINEAR, [0.0])[0].numpy())
    return np.stack(out), np.stack(displacements)


@pytest.mark.parametrize('alpha, sigma', [(50.0, 5.0), (34.0, 4.0), (200.0, 2.5)])
def test_elastic_matches_torchvision_on_the_same_draws(images, alpha, sigma):
    """The blur (reflect padding, torchvision's kernel size) and the bilinear sampling with its fill mask, against
    torchvision on identical uniform draws; alpha 200 pushes pixels across the border. Tolerance 1e-5 of a [0, 1]
    pixel (a 400th of a grey level): float32 source coordinates an ulp or two apart (torch's linspace for the
    identity grid rounds differently from XLA's) times the noise image's jumps of up to 1 between neighbours;
    measured at most 3.2e-6, on 3 of 12,544 pixels."""
    floats = images.astype(np.float32) / 255
    noise = np.random.default_rng(1).uniform(-1, 1, (len(images), 2, 28, 28)).astype(np.float32)
    expected, expected_displacement = torchvision_elastic(floats, noise, alpha, sigma)
    displacement = jax.jit(augment.elastic_displacement, static_argnums=(1, 2))(jnp.asarray(noise), alpha, sigma)
    np.testing.assert_allclose(np.asarray(displacement), expected_displacement, rtol=1e-5, atol=1e-6)
    warped = np.asarray(jax.jit(augment.elastic_warp)(jnp.asarray(floats), jnp.asarray(expected_displacement)))
    np.testing.assert_allclose(warped, expected, rtol=0, atol=1e-5)
    assert np.abs(warped - floats).mean() > 0.01  # it moved the pixels


def test_elastic_without_displacement_is_the_identity_and_draws_per_image(images):
    floats = jnp.asarray(images.astype(np.float32) / 255)
    still = jax.jit(augment.elastic_warp)(floats, jnp.zeros(floats.shape + (2,)))  # compiled, as training runs it
    # Up to the identity grid's float32 round trip to pixel coordinates (torchvision's too: about 1e-6 of a pixel):
    # measured 3.2e-6 on 1 of 12,544 pixels compiled as one program (op by op, under 2e-6).
    np.testing.assert_allclose(np.asarray(still), np.asarray(floats), rtol=0, atol=4e-6)
    twice = jnp.concatenate([floats[:1], floats[:1]])
    a, b = jax.jit(augment.elastic, static_argnums=(2, 3))(jax.random.key(0), twice, 50.0, 5.0)
    assert not np.allclose(a, b)  # each image draws its own field
    with pytest.raises(ValueError, match='wider than the 28-pixel image'):
        augment.blur_matrix(28, 7.0)
