"""Photos of a turned aluminium flange in an inspection fixture, rendered.

The bundled `machined-flange` component needs many photos of one part in a
fixed pose, as a camera above a fixture takes them, and photos of the same
part with defects whose exact masks are known. No installed package ships
such photos, so this module renders them with numpy: a flat flange with a
centre bore, six bolt holes and a locating notch, its face covered in the
concentric marks of turning, lying on a dark anodised fixture plate.

Each photo varies the way photos on a line do: the part sits up to a few
pixels and about a degree off (the play of the locating pin), the lathe
marks differ from part to part, exposure and the light's direction drift,
the illumination is a little uneven, and the sensor adds noise. Every
nuisance is drawn from a bounded range, so a few hundred photos cover what
the line produces.

A photo is drawn from its own generator, seeded with a sequence such as
(seed, photo set, index), so it never depends on how many photos were drawn
before it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 320  # Photo side in pixels; the camera distance is fixed.

# Part geometry, in photo pixels, in the part's own frame (v points down).
OUTER_RADIUS = 132.0
BORE_RADIUS = 44.0
BOLT_CIRCLE_RADIUS = 94.0
BOLT_RADIUS = 12.0
BOLT_ANGLES = tuple(math.radians(30.0 + 60.0 * k) for k in range(6))
NOTCH_HALF_SIZE = (8.0, 10.0)  # The locating notch at the top of the rim.
CHAMFER = 3.0  # Every edge is chamfered this wide.

# Line conditions: bounds of the uniform draws.
MAX_SHIFT = 4.0  # Pixels, on each axis.
MAX_TILT = math.radians(1.2)
LIGHT_DIRECTION = math.radians(-135.0)  # Towards the light: upper left.
MAX_LIGHT_DRIFT = math.radians(4.0)
EXPOSURE = (0.9, 1.1)
MAX_FALLOFF = 0.05  # Brightness change across the photo.
READ_NOISE = 0.006
SHOT_NOISE = 0.0004  # Variance per unit of signal.

# Appearance: RGB in [0, 1] at the nominal exposure.
ALUMINIUM = np.array([0.64, 0.66, 0.68])
PLATE = np.array([0.09, 0.09, 0.11])
PLATE_SEED = 7
FRACTURE = np.array([0.8, 0.8, 0.8])  # Freshly broken aluminium: bright, matte.
FRACTURE_WIDTH = 2.0
GRIT = np.array([0.1, 0.09, 0.08])
SHADOW_OFFSET = 5.0  # The part stands off the plate; its shadow falls this far.
SHADOW_SOFTNESS = 4.0
FEED_PITCH = 2.2  # Pixels between lathe grooves.


@dataclass(frozen=True)
class Conditions:
    """How one photo was taken: the part's pose and the light."""

    shift: tuple[float, float]  # Part centre from the photo centre, (x, y).
    tilt: float  # Part rotation, radians.
    light: float  # Direction towards the light in the photo, radians.
    exposure: float
    falloff: tuple[float, float]  # Brightness slope across the photo, (x, y).

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Conditions:
        """Uniformly within the bounds above: the part's pose, the light."""
        shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
        falloff = rng.uniform(-MAX_FALLOFF, MAX_FALLOFF, 2)
        return cls(
            shift=(float(shift[0]), float(shift[1])),
            tilt=float(rng.uniform(-MAX_TILT, MAX_TILT)),
            light=LIGHT_DIRECTION
            + float(rng.uniform(-MAX_LIGHT_DRIFT, MAX_LIGHT_DRIFT)),
            exposure=float(rng.uniform(*EXPOSURE)),
            falloff=(float(falloff[0]), float(falloff[1])),
        )

    @property
    def towards_light(self) -> tuple[float, float]:
        """Unit vector towards the light, in the photo's axes."""
        return math.cos(self.light), math.sin(self.light)


class Frame:
    """Every pixel's offset from the part centre, in the photo's axes (x, y)
    and in the part's own axes (u, v), which turn with the part."""

    def __init__(self, shift: tuple[float, float], tilt: float) -> None:
        rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
        centre = (SIZE - 1) / 2
        self.x = cols - centre - shift[0]
        self.y = rows - centre - shift[1]
        cos, sin = math.cos(tilt), math.sin(tilt)
        self.u = cos * self.x + sin * self.y
        self.v = -sin * self.x + cos * self.y

    def distance(self, centre: tuple[float, float]) -> np.ndarray:
        """Distance from a point given in part coordinates."""
        distance: np.ndarray = np.hypot(self.u - centre[0], self.v - centre[1])
        return distance


def coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside a shape, from its signed distance
    (negative inside): a one-pixel ramp, so edges are antialiased."""
    covered: np.ndarray = np.clip(0.5 - signed_distance, 0.0, 1.0)
    return covered


def bolt_centre(angle: float) -> tuple[float, float]:
    """Centre of the bolt hole at `angle` on the bolt circle, part axes."""
    return (
        BOLT_CIRCLE_RADIUS * math.cos(angle),
        BOLT_CIRCLE_RADIUS * math.sin(angle),
    )


def material_distance(frame: Frame) -> np.ndarray:
    """Signed distance to the flange's material: the disc less the bore, the
    bolt holes and the notch (each a max, as cutting one shape from another
    takes the larger of the two distances)."""
    radius = frame.distance((0.0, 0.0))
    distance = np.maximum(radius - OUTER_RADIUS, BORE_RADIUS - radius)
    for angle in BOLT_ANGLES:
        distance = np.maximum(
            distance, BOLT_RADIUS - frame.distance(bolt_centre(angle))
        )
    # The notch: a box centred on the rim's top, its own distance negated.
    half_w, half_h = NOTCH_HALF_SIZE
    qu = np.abs(frame.u) - half_w
    qv = np.abs(frame.v + OUTER_RADIUS) - half_h
    box = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0)) + np.minimum(
        np.maximum(qu, qv), 0.0
    )
    result: np.ndarray = np.maximum(distance, -box)
    return result


def smooth_noise(rng: np.random.Generator, length: int, sigma: float) -> np.ndarray:
    """White noise blurred by a Gaussian of `sigma` samples, unit deviation."""
    taps = np.arange(-3 * math.ceil(sigma), 3 * math.ceil(sigma) + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    noise = np.convolve(rng.normal(size=length + taps.size - 1), kernel, "valid")
    result: np.ndarray = noise / noise.std()
    return result


def turned_face(
    frame: Frame, conditions: Conditions, rng: np.random.Generator
) -> np.ndarray:
    """The flat face everywhere, as if the part had no holes or edges.

    Brightness follows the radius only, as turning leaves it: a groove per
    feed whose depth wanders with the tool, and slow rings of tool wear.
    Light glancing off the grooves adds a bow-tie highlight aligned with
    the light's direction.
    """
    step = 0.25
    radii = np.arange(0.0, OUTER_RADIUS + 2 * CHAMFER, step)
    phase = rng.uniform(0.0, 2 * math.pi)
    grooves = np.cos(2 * math.pi * radii / FEED_PITCH + phase)
    depth = 1.0 + 0.4 * smooth_noise(rng, radii.size, 8.0 / step)
    wear = smooth_noise(rng, radii.size, 5.0 / step)
    profile = 0.03 * depth * grooves + 0.025 * wear
    brightness = 1.0 + np.interp(frame.distance((0.0, 0.0)), radii, profile)
    bearing = np.arctan2(frame.y, frame.x)
    brightness *= 1.0 + 0.1 * np.cos(2 * (bearing - conditions.light))
    albedo = 1.0 + rng.uniform(-0.03, 0.03)
    face: np.ndarray = albedo * brightness[..., None] * ALUMINIUM
    return face


@functools.cache
def plate_mottle() -> np.ndarray:
    """The fixture plate's faint mottling: one plate serves the station, so
    every photo shows the same pattern (drawn once, from a fixed seed)."""
    coarse = np.random.default_rng(PLATE_SEED).normal(size=(12, 12))
    image = Image.fromarray(coarse.astype(np.float32), mode="F")
    mottle = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return 1.0 + 0.08 * np.asarray(mottle, dtype=np.float64)


def fixture_plate(conditions: Conditions) -> np.ndarray:
    """The anodised plate under the part, darkened by the part's soft
    shadow, cast away from the light."""
    lx, ly = conditions.towards_light
    shadow_frame = Frame(
        (
            conditions.shift[0] - SHADOW_OFFSET * lx,
            conditions.shift[1] - SHADOW_OFFSET * ly,
        ),
        conditions.tilt,
    )
    shadow = coverage(material_distance(shadow_frame) / SHADOW_SOFTNESS)
    plate: np.ndarray = (plate_mottle() * (1.0 - 0.5 * shadow))[..., None] * PLATE
    return plate


def chamfer_shade(
    material: np.ndarray, conditions: Conditions
) -> tuple[np.ndarray, np.ndarray]:
    """The chamfers' weight per pixel and their brightness: a chamfer slopes
    away from the material, so one facing the light is bright and one
    facing away dark."""
    grad_y, grad_x = np.gradient(material)
    norm = np.maximum(np.hypot(grad_x, grad_y), 1e-9)
    lx, ly = conditions.towards_light
    facing = (grad_x * lx + grad_y * ly) / norm
    weight = coverage(-(material + CHAMFER))
    brightness = 0.7 + 0.45 * facing
    return weight, brightness


@dataclass
class Layers:
    """A photo being painted: the composed picture, and the two surfaces a
    defect can reveal (the plain face and the plate), RGB arrays."""

    frame: Frame
    conditions: Conditions
    material: np.ndarray  # Signed distance to the material.
    face: np.ndarray
    plate: np.ndarray
    picture: np.ndarray

    def on_part(self, weight: np.ndarray) -> np.ndarray:
        """`weight` limited to the part's material."""
        limited: np.ndarray = weight * coverage(self.material)
        return limited

    def blend(self, colour: np.ndarray, weight: np.ndarray) -> None:
        w = weight[..., None]
        self.picture = (1.0 - w) * self.picture + w * colour

    def free_spot(
        self, rng: np.random.Generator, clearance: float
    ) -> tuple[float, float]:
        """A point of the face (part coordinates) at least `clearance` from
        every edge, drawn uniformly over the face."""
        while True:
            radius = math.sqrt(rng.uniform(BORE_RADIUS**2, OUTER_RADIUS**2))
            angle = rng.uniform(0.0, 2 * math.pi)
            spot = (radius * math.cos(angle), radius * math.sin(angle))
            holes = min(math.dist(spot, bolt_centre(a)) for a in BOLT_ANGLES)
            if (
                BORE_RADIUS + clearance <= radius <= OUTER_RADIUS - clearance
                and holes >= BOLT_RADIUS + clearance
            ):
                return spot


def blob_distance(
    frame: Frame,
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    *,
    roughness: float,
    elongation: float = 1.0,
) -> np.ndarray:
    """Approximate signed distance to an irregular blob: an ellipse whose
    radius wobbles with a few random harmonics of the bearing."""
    turn = rng.uniform(0.0, math.pi)
    du, dv = frame.u - centre[0], frame.v - centre[1]
    along = math.cos(turn) * du + math.sin(turn) * dv
    across = -math.sin(turn) * du + math.cos(turn) * dv
    bearing = np.arctan2(across * elongation, along)
    wobble = sum(
        rng.normal(0.0, 1.0 / k) * np.cos(k * bearing + rng.uniform(0, 2 * math.pi))
        for k in range(2, 6)
    )
    edge = radius * (1.0 + roughness * wobble)
    result: np.ndarray = np.hypot(along, across * elongation) - edge
    return result


def paint_scratch(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A tool or handling scratch: a straight dark groove cut across the
    lathe marks, stopping wherever it runs off the material."""
    centre = layers.free_spot(rng, 20.0)
    length, angle = rng.uniform(40.0, 70.0), rng.uniform(0.0, math.pi)
    half = (0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle))
    du, dv = layers.frame.u - centre[0], layers.frame.v - centre[1]
    # Distance to the segment: from the nearest of its points.
    along = np.clip((du * half[0] + dv * half[1]) / (0.25 * length**2), -1.0, 1.0)
    distance = np.hypot(du - along * half[0], dv - along * half[1])
    weight = layers.on_part(coverage(distance - 1.0))
    layers.blend(0.35 * layers.picture, weight)
    return weight >= 0.5


def paint_dent(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A dent: a shallow bowl, whose wall facing the light is bright and
    whose opposite wall is in shade."""
    centre = layers.free_spot(rng, 14.0)
    radius = rng.uniform(6.0, 9.0)
    weight = layers.on_part(coverage(layers.frame.distance(centre) - radius))
    du, dv = layers.frame.u - centre[0], layers.frame.v - centre[1]
    # The bowl's slope in the photo's axes: undo the part's tilt.
    cos, sin = math.cos(layers.conditions.tilt), math.sin(layers.conditions.tilt)
    dx, dy = cos * du - sin * dv, sin * du + cos * dv
    lx, ly = layers.conditions.towards_light
    shade = 0.85 - 0.5 * (dx * lx + dy * ly) / radius
    layers.blend(shade[..., None] * layers.picture, weight)
    return weight >= 0.5


def paint_chipped_edge(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A piece broken off the rim: the plate shows where it was, and a band
    of fresh fracture runs along the break."""
    while True:
        angle = rng.uniform(0.0, 2 * math.pi)
        # Keep clear of the notch, at the top of the rim.
        if abs(math.remainder(angle + math.pi / 2, 2 * math.pi)) > math.radians(20):
            break
    reach = OUTER_RADIUS + 1.0
    centre = (reach * math.cos(angle), reach * math.sin(angle))
    size = rng.uniform(9.0, 12.0)
    chip = blob_distance(
        layers.frame, centre, size, rng, roughness=0.15, elongation=1.4
    )
    broken = layers.on_part(coverage(chip - FRACTURE_WIDTH))
    layers.blend(FRACTURE, broken)
    layers.blend(layers.plate, layers.on_part(coverage(chip)))
    return broken >= 0.5


def paint_stain(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """Dried coolant: a translucent brownish film, darker at its rim where
    the residue gathered as it dried."""
    centre = layers.free_spot(rng, 16.0)
    blob = blob_distance(
        layers.frame,
        centre,
        rng.uniform(10.0, 14.0),
        rng,
        roughness=0.2,
        elongation=1.3,
    )
    weight = layers.on_part(coverage(blob))
    rim = np.clip(1.0 + blob / 2.5, 0.0, 1.0)
    film = np.array([0.8, 0.72, 0.58])[None, None, :] * (1.0 - 0.25 * rim)[..., None]
    layers.blend(film * layers.picture, weight)
    return weight >= 0.5


def paint_particle(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A foreign particle left on the face: a small dark crumb of grit."""
    centre = layers.free_spot(rng, 8.0)
    blob = blob_distance(
        layers.frame, centre, rng.uniform(3.0, 4.5), rng, roughness=0.3
    )
    weight = layers.on_part(coverage(blob))
    layers.blend(GRIT, weight)
    return weight >= 0.5


def paint_missing_hole(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A bolt hole that was never drilled: plain face, chamfer included."""
    angle = BOLT_ANGLES[int(rng.integers(len(BOLT_ANGLES)))]
    weight = coverage(
        layers.frame.distance(bolt_centre(angle)) - (BOLT_RADIUS + CHAMFER + 1.0)
    )
    layers.blend(layers.face, weight)
    return weight >= 0.5


PAINTERS: dict[str, Callable[[Layers, np.random.Generator], np.ndarray]] = {
    "scratch": paint_scratch,
    "dent": paint_dent,
    "chipped-edge": paint_chipped_edge,
    "stain": paint_stain,
    "particle": paint_particle,
    "missing-hole": paint_missing_hole,
}
DEFECT_KINDS = tuple(PAINTERS)


def expose(
    picture: np.ndarray, conditions: Conditions, rng: np.random.Generator
) -> np.ndarray:
    """What the camera records: exposure, uneven illumination, shot and
    read noise, then 8-bit quantisation."""
    ramp = np.linspace(-0.5, 0.5, SIZE)
    light = conditions.exposure * (
        1.0
        + conditions.falloff[0] * ramp[None, :]
        + conditions.falloff[1] * ramp[:, None]
    )
    signal = picture * light[..., None]
    noise = rng.normal(size=signal.shape) * np.sqrt(READ_NOISE**2 + SHOT_NOISE * signal)
    image: np.ndarray = np.clip(np.rint(255 * (signal + noise)), 0, 255).astype(
        np.uint8
    )
    return image


def render(
    seed: Sequence[int], defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One photo, uint8 RGB [SIZE, SIZE, 3], and its defect mask (bool,
    all False for a good part). The same seed gives the same photo.

    The part and the light, the defect, and the sensor noise each draw from
    their own generator, so a defective photo is its good twin (the same
    seed without a defect) with the defect painted in: outside the mask's
    antialiased edge the two are identical, pixel for pixel.
    """
    part_rng, defect_rng, noise_rng = (
        np.random.default_rng(child)
        for child in np.random.SeedSequence(list(seed)).spawn(3)
    )
    conditions = Conditions.draw(part_rng)
    frame = Frame(conditions.shift, conditions.tilt)
    material = material_distance(frame)
    face = turned_face(frame, conditions, part_rng)
    plate = fixture_plate(conditions)
    weight, brightness = chamfer_shade(material, conditions)
    part = face * (1.0 + weight * (brightness - 1.0))[..., None]
    inside = coverage(material)[..., None]
    layers = Layers(
        frame, conditions, material, face, plate, inside * part + (1 - inside) * plate
    )
    if defect is None:
        mask = np.zeros((SIZE, SIZE), dtype=bool)
    else:
        mask = PAINTERS[defect](layers, defect_rng)
    return expose(layers.picture, conditions, noise_rng), mask
