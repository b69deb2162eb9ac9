"""The seed's §4 training augmentation, batched and on device, and an elastic distortion (Simard et al. 2003) as
torchvision's ``ElasticTransform`` computes it.

torchvision's ``RandomAffine(degrees=0, translate=(0.1, 0.1))`` followed by
``RandomRotation((-10, 10))``, both with nearest interpolation and fill 0, applied to
the raw image (before ``Normalize``). torchvision runs both through PIL, so ``warp``
reproduces PIL's resampling arithmetic rather than an idealised rotation. Not the blog's,
optionally: other ranges of shift and rotation, and the affine step also scaling
(``RandomAffine(..., scale=(1 - s, 1 + s))``): ``Warp``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Warp(NamedTuple):
    """The ranges of the random warp; the defaults are the blog's §4 (Config.translate, .degrees, .scale)."""

    translate: float = 0.1  # RandomAffine(translate=(t, t)): the largest shift, a fraction of width / height
    degrees: float = 10.0  # RandomRotation((-d, d))
    scale: float = 0.0  # > 0: RandomAffine(scale=(1 - s, 1 + s)); 0: no scaling

# PIL's nearest-neighbour affine path works in 16.16 fixed point.
_FIXED_ONE = 1 << 16
_FIXED_HALF = 1 << 15


def sample_params(key, n, height=28, width=28, ranges: Warp = Warp()):
    """Draws ``n`` augmentation parameters the way torchvision draws them.

    Returns:
      ``(tx, ty, angle)``: integer shifts in pixels (int32, ``round(U(-0.1 W, 0.1 W))``
      and likewise for ``ty`` with ``H``, rounding half to even like Python's
      ``round``) and a counter-clockwise angle in degrees (float32, ``U(-10, 10)``);
      other ``ranges``, other bounds (the same uniform draws, scaled).
    """
    key_tx, key_ty, key_angle = jax.random.split(key, 3)
    max_dx = ranges.translate * width
    max_dy = ranges.translate * height
    tx = jnp.round(jax.random.uniform(key_tx, (n,), minval=-max_dx, maxval=max_dx))
    ty = jnp.round(jax.random.uniform(key_ty, (n,), minval=-max_dy, maxval=max_dy))
    angle = jax.random.uniform(key_angle, (n,), minval=-ranges.degrees, maxval=ranges.degrees)
    return tx.astype(jnp.int32), ty.astype(jnp.int32), angle


def sample_scales(key, n, max_scale: float):
    """``n`` scale factors ``U(1 - max_scale, 1 + max_scale)`` (float32), as ``RandomAffine(scale=...)`` draws them."""
    return jax.random.uniform(key, (n,), minval=1.0 - max_scale, maxval=1.0 + max_scale)


def _fix(value):
    """PIL's ``FIX``: rounds a real to 16.16 fixed point."""
    return jnp.floor(value * _FIXED_ONE + 0.5).astype(jnp.int32)


def _rotation_sources(angle, height, width):
    """Source pixel of every output pixel of PIL's ``Image.rotate(angle, NEAREST)``.

    PIL maps each output pixel centre through the inverse rotation about
    ``(W/2, H/2)`` and floors the result, using 16.16 fixed-point increments whose
    rounding decides the boundary pixels; emulating the integer arithmetic matches
    PIL on boundaries where a floating-point floor would not.

    Args:
      angle: ``[B]`` counter-clockwise angles in degrees.
      height: image height.
      width: image width.

    Returns:
      ``(rows, cols)``, int32 ``[B, H, W]``, possibly outside the image.
    """
    theta = jnp.deg2rad(angle.astype(jnp.float32))[:, None, None]
    sin = jnp.sin(theta)
    # 1 - cos(theta) in a cancellation-free form: its fixed-point rounding
    # needs more accuracy than float32 cos near 1 gives.
    one_minus_cos = 2.0 * jnp.sin(theta / 2) ** 2
    cx, cy = width / 2, height / 2
    # PIL's inverse matrix is [[c, -s, ·], [s, c, ·]] with the offsets folded in at the
    # first pixel centre (0.5, 0.5); written around 1 - cos so that the float32
    # terms stay small. FIX(1 + v) = ONE + FIX(v) and FIX(0.5 + v) = HALF + FIX(v).
    cos_fixed = _FIXED_ONE + _fix(-one_minus_cos)
    col_origin = _FIXED_HALF + _fix(one_minus_cos * (cx - 0.5) + sin * (cy - 0.5))
    row_origin = _FIXED_HALF + _fix(one_minus_cos * (cy - 0.5) - sin * (cx - 0.5))
    rows, cols = jnp.mgrid[:height, :width].astype(jnp.int32)
    # PIL accumulates these integer steps pixel by pixel; int32 sums are exact, and
    # the arithmetic shift floors like PIL's ``>> 16``.
    col_fixed = col_origin + cols * cos_fixed + rows * _fix(-sin)
    row_fixed = row_origin + cols * _fix(sin) + rows * cos_fixed
    return row_fixed >> 16, col_fixed >> 16


def _scaling_sources(index, shift, scale, centre):
    """Source index of output index ``index`` along one axis in PIL's scaling path (``ImagingScaleAffine``) for
    torchvision's inverse matrix of a shift and a scale about ``centre``: ``floor(a (i + 0.5) + b)`` with ``a = 1 /
    scale`` and ``b = a (-centre - shift) + centre``, in torchvision's order of operations. PIL accumulates ``a`` in
    float64 from the first pixel centre; float32 here, so a source index may rarely differ where the product falls
    within about 1e-6 of an integer. Without a scale it is exactly ``floor(i + 0.5 - shift)``."""
    if scale is None:
        return jnp.floor(index + 0.5 - shift[:, None, None]).astype(jnp.int32)
    a = (1.0 / scale)[:, None, None]
    b = a * (-centre - shift[:, None, None].astype(a.dtype)) + centre
    return jnp.floor(b + a * 0.5 + a * index).astype(jnp.int32)


def warp(images, tx, ty, angle, scale=None):
    """Translates (and scales) then rotates ``images`` exactly as torchvision's PIL path does.

    Equivalent to ``F.rotate(F.affine(img, angle=0, translate=[tx, ty], scale=scale,
    shear=0, interpolation=NEAREST, fill=0), angle, NEAREST, fill=0)`` per image.

    Args:
      images: ``[B, H, W]`` raw images, any dtype (uint8 or float in [0, 1]).
      tx: ``[B]`` horizontal shifts in pixels (right is positive).
      ty: ``[B]`` vertical shifts in pixels (down is positive).
      angle: ``[B]`` counter-clockwise rotations in degrees about the image centre.
      scale: ``[B]`` float32 scale factors about the image centre (> 1 enlarges), or None for 1.

    Returns:
      The warped images, same shape and dtype; pixels from outside the image are 0.
    """
    batch, height, width = images.shape
    rows, cols = _rotation_sources(angle, height, width)
    inside_rotation = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    # The shift (and scale) is PIL's scaling path. Both resamplings are nearest
    # neighbour, so chaining their index maps is the same as resampling twice, with
    # one gather instead of two.
    rows = _scaling_sources(rows, ty, scale, height / 2)
    cols = _scaling_sources(cols, tx, scale, width / 2)
    inside = inside_rotation & (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    flat_index = jnp.where(inside, rows * width + cols, 0).reshape(batch, -1)
    pixels = jnp.take_along_axis(images.reshape(batch, -1), flat_index, axis=1)
    return jnp.where(inside, pixels.reshape(images.shape), jnp.zeros((), images.dtype))


def augment(key, images, ranges: Warp = Warp()):
    """Random translation then rotation of a ``[B, H, W]`` batch (seed §4, or other ``ranges``); with
    ``ranges.scale`` > 0 the translation also scales by ``U(1 - s, 1 + s)``, drawn from its own key (the other
    draws stay the same)."""
    batch, height, width = images.shape
    scale = sample_scales(jax.random.fold_in(key, 3), batch, ranges.scale) if ranges.scale else None
    return warp(images, *sample_params(key, batch, height, width, ranges), scale)


def blur_matrix(size: int, sigma: float):
    """``[size, size]`` float32: ``blur_matrix(n, s) @ x`` blurs ``x`` along its first axis as torchvision's
    ``gaussian_blur`` does (a kernel of ``int(8 sigma + 1)`` taps made odd, normalised, reflect padding). One
    matrix per axis, since torchvision's 2-d kernel is the outer product of two 1-d ones."""
    taps = int(8 * sigma + 1) | 1
    half = taps // 2
    if half >= size:
        raise ValueError(f"elastic sigma {sigma:g} needs a blur of {taps} taps: wider than the {size}-pixel image")
    offsets = jnp.arange(taps, dtype=jnp.float32) - half
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # Output i reads input i + k - half for tap k, reflected at the borders (-1 -> 1, size -> size - 2).
    source = jnp.arange(size)[:, None] + jnp.arange(taps)[None, :] - half
    source = jnp.where(source < 0, -source, jnp.where(source >= size, 2 * (size - 1) - source, source))
    return jnp.zeros((size, size), jnp.float32).at[jnp.arange(size)[:, None], source].add(kernel[None, :])


def elastic_displacement(noise, alpha: float, sigma: float):
    """torchvision's ``ElasticTransform.get_params`` from its uniform draws: ``noise`` ``[B, 2, H, W]`` in [-1, 1)
    (x, then y) blurred and scaled by ``alpha / W`` (x) and ``alpha / H`` (y), in grid units (2 per image width).
    Returns ``[B, H, W, 2]``, as torchvision's ``displacement``."""
    _, _, height, width = noise.shape
    rows, cols = blur_matrix(height, sigma), blur_matrix(width, sigma)
    blurred = jnp.einsum("hi,bcij,wj->bchw", rows, noise, cols)
    scale = jnp.asarray([alpha / width, alpha / height], noise.dtype)[None, :, None, None]
    return jnp.moveaxis(blurred * scale, 1, -1)


def elastic_warp(images, displacement):
    """torchvision's ``F.elastic_transform(images, displacement)`` with bilinear sampling and fill 0: ``grid_sample``
    (zeros padding, ``align_corners=False``) of the image, times the same sampling of an all-ones image (the fill
    mask torchvision blends with). ``images`` float ``[B, H, W]``; ``displacement`` ``[B, H, W, 2]``."""
    batch, height, width = images.shape
    # torchvision's identity grid plus the displacement, then grid_sample's unnormalisation, in that float order.
    x = jnp.linspace((1 - width) / width, (width - 1) / width, width, dtype=images.dtype)[None, None, :]
    y = jnp.linspace((1 - height) / height, (height - 1) / height, height, dtype=images.dtype)[None, :, None]
    cols = (x + displacement[..., 0]) * (width / 2) + (width - 1) / 2
    rows = (y + displacement[..., 1]) * (height / 2) + (height - 1) / 2
    row0, col0 = jnp.floor(rows), jnp.floor(cols)
    flat = images.reshape(batch, -1)
    out, mask = jnp.zeros_like(images), jnp.zeros_like(images)
    # grid_sample's weights: each corner's, from the distances to the opposite corner (north-west first).
    above, left = row0 + 1 - rows, col0 + 1 - cols
    below, right = rows - row0, cols - col0
    for dr, dc, weight in ((0, 0, above * left), (0, 1, above * right), (1, 0, below * left), (1, 1, below * right)):
        r, c = row0 + dr, col0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        index = jnp.where(inside, r * width + c, 0).astype(jnp.int32).reshape(batch, -1)
        pixels = jnp.take_along_axis(flat, index, axis=1).reshape(images.shape)
        out = out + jnp.where(inside, weight * pixels, 0)
        mask = mask + jnp.where(inside, weight, 0)
    return out * mask


def elastic(key, images, alpha: float, sigma: float):
    """A fresh elastic distortion of every image of a float ``[B, H, W]`` batch (torchvision's
    ``ElasticTransform(alpha, sigma)``, bilinear, fill 0, drawn per image)."""
    batch, height, width = images.shape
    noise = jax.random.uniform(key, (batch, 2, height, width), images.dtype, minval=-1.0, maxval=1.0)
    return elastic_warp(images, elastic_displacement(noise, alpha, sigma))
