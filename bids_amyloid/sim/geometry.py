"""Poses, native grids and the scanner effects of the simulator (bias field, noise).

A subject's head is the template head scaled by ``head_scale`` about the brain
centroid ``c``, then moved by a rigid pose ``M`` (rotation about ``c``, then a
translation). A template-world point ``p`` lands at native-world
``M @ (c + s·(p − c))``. The ground truth written for each image is the rigid
part only: ``native_to_template = inv(M)``; the brain centroid lands at
``M @ c`` (``centroid_native``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Voxel-axis orientations used for native grids (nibabel axis codes).
ORIENTATIONS = ("RAS", "LPS", "LAS", "LIA", "PIR", "RPI")
_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0),
         "I": (2, -1.0)}


@dataclass(frozen=True)
class Pose:
    """Rigid pose of a head in the scanner, plus its isotropic scale."""

    rotation: np.ndarray     # 3x3
    translation: np.ndarray  # mm, applied after rotating about the centroid
    scale: float
    centroid: np.ndarray     # brain centroid, template world mm

    @property
    def rigid(self) -> np.ndarray:
        """4x4 template world → native world (rigid part, ``M``)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.centroid + self.translation - self.rotation @ self.centroid
        return m

    @property
    def full(self) -> np.ndarray:
        """4x4 template world → native world, scaling included."""
        s = np.eye(4)
        s[:3, :3] *= self.scale
        s[:3, 3] = self.centroid * (1.0 - self.scale)
        return self.rigid @ s

    @property
    def angle_deg(self) -> float:
        return rotation_angle_deg(self.rotation)


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """Angle (degrees) of a 3x3 rotation matrix."""
    cos = (np.trace(rotation) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def axis_angle(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotation matrix about unit ``axis`` by ``angle_deg`` (Rodrigues)."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(angle_deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def random_pose(rng: np.random.Generator, centroid: np.ndarray, scale: float,
                max_angle: float = 15.0, max_shift: float = 15.0,
                base: Pose | None = None) -> Pose:
    """A random rigid pose (angle ≤ ``max_angle``°, shift ≤ ``max_shift`` mm), after ``base``."""
    rot = axis_angle(rng.normal(size=3), rng.uniform(0.2, 1.0) * max_angle)
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(0.0, max_shift)
    if base is not None:  # small extra motion on top of a session pose
        rot = rot @ base.rotation
        shift = shift + base.translation
    return Pose(rotation=rot, translation=shift, scale=scale, centroid=np.asarray(centroid))


def orientation_matrix(axcodes: str) -> np.ndarray:
    """3x3 matrix whose column i is the world direction of voxel axis i."""
    mat = np.zeros((3, 3))
    for i, code in enumerate(axcodes):
        axis, sign = _AXIS[code]
        mat[axis, i] = sign
    return mat


def native_grid(points_world: np.ndarray, axcodes: str, voxel: tuple[float, float, float],
                margin_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of an axis-aligned grid with ``axcodes`` covering the points + margin."""
    lo = points_world.min(axis=0) - margin_mm
    hi = points_world.max(axis=0) + margin_mm
    directions = orientation_matrix(axcodes)
    affine = np.eye(4)
    shape = []
    origin = np.zeros(3)
    for i in range(3):
        axis = int(np.argmax(np.abs(directions[:, i])))
        sign = directions[axis, i]
        affine[:3, i] = directions[:, i] * voxel[i]
        n = int(np.ceil((hi[axis] - lo[axis]) / voxel[i])) + 1
        shape.append(n)
        origin[axis] = lo[axis] if sign > 0 else lo[axis] + (n - 1) * voxel[i]
    affine[:3, 3] = origin
    return affine, (shape[0], shape[1], shape[2])


def sample(volume: np.ndarray, volume_affine: np.ndarray, pose: Pose, affine: np.ndarray,
           shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Sample a template-space ``volume`` onto a native grid seen through ``pose``."""
    index_map = np.linalg.inv(volume_affine) @ np.linalg.inv(pose.full) @ affine
    return ndimage.affine_transform(volume, index_map[:3, :3], index_map[:3, 3],
                                    output_shape=shape, order=order, mode="constant", cval=0.0,
                                    prefilter=False)


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int],
               strength: float) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial) of about ±``strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    terms = (x, y, z, x * x - 0.33, y * y - 0.33, z * z - 0.33)
    coef = rng.normal(0.0, 1.0, size=len(terms))
    coef[:3] *= strength
    coef[3:] *= strength / 2
    log_field = np.zeros(shape, dtype=np.float32)
    for c, term in zip(coef, terms, strict=True):
        log_field += np.float32(c) * term
    log_field += np.float32(rng.normal(0.0, strength / 2)) * x * y
    return np.exp(log_field)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of std ``sigma``."""
    scale = np.float32(sigma)
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= scale
    real += signal
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= scale
    return np.sqrt(real * real + imag * imag)
