"""The drawing primitives of the generated scenes (``synthetic``): shape masks on
radius-normalised coordinates and the background painters, float32 [H, W, 3] in 0..255."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image


# Muted tones for gradients and stripes: far from every entry of COLOURS.
_MUTED_TONES = np.array(
    [
        (200, 190, 160),
        (150, 150, 150),
        (110, 120, 135),
        (140, 110, 80),
        (180, 160, 120),
        (130, 135, 110),
        (160, 150, 170),
        (110, 140, 140),
        (85, 85, 90),
        (190, 190, 195),
    ],
    dtype=np.float32,
)


# --------------------------------------------------------------------------------------
# Shapes: boolean masks from rotated, radius-normalised coordinates
# --------------------------------------------------------------------------------------
# u, v are float32 arrays: the pixel-centre offsets from the object's centre, rotated
# into the object's frame and divided by its radius, so each shape fits roughly in the
# unit disc.


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Half-side 0.75: corners reach 1.06, close to the disc, and the area is near the
    # circle's, so neither class dominates pixel counts.
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75


_TRIANGLE_CIRCUMRADIUS = 1.15
# Outward normals of an equilateral triangle with a vertex at angle pi/2.
_TRIANGLE_NORMALS = np.array(
    [[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)],
    dtype=np.float32,
)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Inside iff the projection on every edge normal is at most the inradius (R / 2).
    proj = np.maximum.reduce([u * n[0] + v * n[1] for n in _TRIANGLE_NORMALS])
    return proj <= _TRIANGLE_CIRCUMRADIUS / 2


_STAR_POINTS = 5
_STAR_OUTER = 1.1
_STAR_INNER = 0.45


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Fold the angle into the half-sector [0, pi/5] between an outer vertex A (on the
    # x axis) and the next inner vertex B; the star is then the triangle (0, A, B).
    sector = 2 * math.pi / _STAR_POINTS
    rho = np.sqrt(u * u + v * v)
    phi = np.mod(np.arctan2(v, u), sector)
    phi = np.minimum(phi, sector - phi)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ax, ay = _STAR_OUTER, 0.0
    bx, by = _STAR_INNER * math.cos(sector / 2), _STAR_INNER * math.sin(sector / 2)
    # Same side of line AB as the origin: cross(B - A, P - A) >= 0.
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0.0


_CROSS_HALF_WIDTH = 0.32


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= _CROSS_HALF_WIDTH) & (av <= 1.0)) | ((av <= _CROSS_HALF_WIDTH) & (au <= 1.0))


_RING_INNER = 0.55


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= _RING_INNER * _RING_INNER)


_SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "ring": _ring,
}

# Every shape lies inside this radius (in units of the object radius); bounds the
# pixel window a mask is evaluated on.
_SHAPE_EXTENT = 1.2


def _unit_areas(resolution: int = 600) -> dict[str, float]:
    """Area of each shape in units of radius^2, by counting on a fine grid."""
    step = 2 * _SHAPE_EXTENT / resolution
    axis = (np.arange(resolution, dtype=np.float32) + 0.5) * step - _SHAPE_EXTENT
    u, v = np.meshgrid(axis, axis)
    return {name: float(fn(u, v).sum()) * step * step for name, fn in _SHAPE_MASKS.items()}


_UNIT_AREAS = _unit_areas()


# --------------------------------------------------------------------------------------
# Backgrounds: float32 [H, W, 3] in 0..255
# --------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Uniform noise on a (cells_y, cells_x) grid, bilinearly resized to [size, size]."""
    coarse = rng.random((max(cells_y, 2), max(cells_x, 2)), dtype=np.float32)
    return np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32
    )


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each float32 [size, size]."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(axis, axis, indexing="ij")


def _two_tones(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = rng.choice(len(_MUTED_TONES), size=2, replace=False)
    jitter = rng.uniform(-12, 12, size=(2, 3)).astype(np.float32)
    return _MUTED_TONES[first] + jitter[0], _MUTED_TONES[second] + jitter[1]


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    # Noise stretched vertically (few rows, many columns) reads as blades of grass.
    blades = _smooth_noise(rng, size, size // 8, size // 2)
    patches = _smooth_noise(rng, size, 3, 3)
    t = np.clip(0.65 * blades + 0.35 * patches, 0.0, 1.0)[..., None]
    dark = np.array([35, 80, 25], dtype=np.float32)
    light = np.array([105, 150, 55], dtype=np.float32)
    fine = rng.normal(0.0, 6.0, size=(size, size, 1)).astype(np.float32)
    return dark + t * (light - dark) + fine


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = _two_tones(rng)
    angle = rng.uniform(0.0, 2 * math.pi)
    y, x = _pixel_grid(size)
    proj = x * math.cos(angle) + y * math.sin(angle)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    return start + t[..., None] * (end - start)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    grey = rng.uniform(70.0, 190.0, size=(size, size, 1)).astype(np.float32)
    tint = rng.uniform(-15.0, 15.0, size=(size, size, 3)).astype(np.float32)
    return grey + tint


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    first, second = _two_tones(rng)
    period = size * rng.uniform(0.08, 0.2)
    angle = rng.uniform(0.0, math.pi)
    phase = rng.uniform(0.0, 1.0)
    y, x = _pixel_grid(size)
    proj = (x * math.cos(angle) + y * math.sin(angle)) / period + phase
    band = (np.mod(proj, 1.0) < 0.5)[..., None]
    return np.where(band, first, second)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    y, _ = _pixel_grid(size)
    top = np.array([80, 140, 215], dtype=np.float32)
    horizon = np.array([175, 210, 240], dtype=np.float32)
    t = (y / size)[..., None]
    base = top + t * (horizon - top)
    # Two octaves: the coarse one alone gives blocky, box-like clouds.
    clouds = 0.65 * _smooth_noise(rng, size, 4, 6) + 0.35 * _smooth_noise(rng, size, 9, 13)
    cover = rng.uniform(0.4, 0.6)
    alpha = np.clip((clouds - cover) * 4.0, 0.0, 0.85)[..., None]
    white = np.array([240, 242, 248], dtype=np.float32)
    return base + alpha * (white - base)


_BACKGROUND_PAINTERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grass": _grass,
    "gradient": _gradient,
    "noise": _noise,
    "stripes": _stripes,
    "sky": _sky,
}


# --------------------------------------------------------------------------------------
# Fill patterns of the patterned scenes: bool [H, W], True where an object shows its
# second (dark) tone
# --------------------------------------------------------------------------------------
# Patterns are laid on a grid of PATTERN_UNITS x PATTERN_UNITS units over the image (2
# pixels per unit at 64 px), so a scene looks the same at every size. Every pattern is
# periodic with a period of at most 3 units, so an 8-pixel patch of a 64-pixel scene
# holds at least one period: a patch inside an object shows which pattern it carries.

PATTERN_UNITS = 32
# The second tone is the object's colour times this factor.
PATTERN_DARK = 0.4


def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in pattern units, each float32 [size, size]."""
    y, x = _pixel_grid(size)
    scale = PATTERN_UNITS / size
    return y * scale, x * scale


def _plain(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.zeros((size, size), dtype=bool)


def _checked(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _unit_grid(size)
    return (np.floor(y) + np.floor(x)) % 2 == 1


def _striped(rng: np.random.Generator, size: int) -> np.ndarray:
    # Diagonal bands, 3 units apart along each axis.
    y, x = _unit_grid(size)
    return np.mod(x + y, 3.0) < 1.5


def _dotted(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _unit_grid(size)
    dy, dx = np.mod(y, 3.0) - 1.5, np.mod(x, 3.0) - 1.5
    return dy * dy + dx * dx <= 0.9 * 0.9


def _speckled(rng: np.random.Generator, size: int) -> np.ndarray:
    # Random cells of one unit: drawn from the scene's stream, so the seed fixes them.
    cells = rng.random((PATTERN_UNITS, PATTERN_UNITS)) < 0.5
    y, x = _unit_grid(size)
    return cells[np.minimum(y.astype(np.intp), PATTERN_UNITS - 1), np.minimum(x.astype(np.intp), PATTERN_UNITS - 1)]


def _grid_lined(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _unit_grid(size)
    return (np.mod(y, 3.0) < 1.0) | (np.mod(x, 3.0) < 1.0)


_PATTERN_PAINTERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "plain": _plain,
    "checked": _checked,
    "striped": _striped,
    "dotted": _dotted,
    "speckled": _speckled,
    "grid-lined": _grid_lined,
}
