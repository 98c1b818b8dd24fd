"""Stroke templates of the sample doodles: named labels, novel labels and procedural classes.

A template is a list of strokes in unit coordinates (x right, y down, roughly within [-1, 1]).
A stroke is ``(kind, points)`` with kind "line" (open polyline), "closed" (polygon drawn by
hand, so the renderer may leave it slightly open or overshoot), "dot" (one point) or "blob"
(a filled polygon). Templates take an rng so that proportions vary a little between drawings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Stroke = tuple[str, np.ndarray]
Template = Callable[[np.random.Generator], list[Stroke]]


def _pts(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def line(*xy: float) -> Stroke:
    return ("line", _pts(*xy))


def closed(*xy: float) -> Stroke:
    return ("closed", _pts(*xy))


def dot(x: float, y: float) -> Stroke:
    return ("dot", _pts(x, y))


def arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> np.ndarray:
    """Points on an elliptic arc from angle a0 to a1 (degrees; y down, so clockwise on screen)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0) -> Stroke:
    return ("closed", arc(cx, cy, rx, ry, start, start + 360.0, 36)[:-1])


def regular(n: int, r: float = 1.0, phase: float = -90.0, cx: float = 0.0, cy: float = 0.0) -> Stroke:
    return ("closed", arc(cx, cy, r, r, phase, phase + 360.0, n + 1)[:-1])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --- named labels: the demo's doodles, also pretraining classes --------------------------------


def _star(rng: np.random.Generator) -> list[Stroke]:
    inner = _u(rng, 0.35, 0.5)
    pts = arc(0, 0, 1, 1, -90, 270, 11)[:-1]
    pts[1::2] *= inner
    return [("closed", pts)]


def _heart(rng: np.random.Generator) -> list[Stroke]:
    t = np.linspace(0, 2 * np.pi, 40)[:-1]
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [("closed", np.stack([x, y], axis=1) / 16.0)]


def _cloud(rng: np.random.Generator) -> list[Stroke]:
    t = np.linspace(0, 2 * np.pi, 72)[:-1]
    bumps = rng.integers(5, 8)
    r = 0.75 + 0.25 * np.abs(np.sin(bumps / 2 * t))
    return [("closed", np.stack([1.5 * r * np.cos(t), r * np.sin(t)], axis=1))]


def _sun(rng: np.random.Generator) -> list[Stroke]:
    rays = int(rng.integers(7, 11))
    out = [ellipse(0, 0, 0.45, 0.45)]
    for a in np.linspace(0, 2 * np.pi, rays + 1)[:-1]:
        c, s = np.cos(a), np.sin(a)
        out.append(line(0.62 * c, 0.62 * s, 1.0 * c, 1.0 * s))
    return out


def _spiral(rng: np.random.Generator) -> list[Stroke]:
    turns = _u(rng, 1.8, 2.6)  # few, open turns: more read as a target
    t = np.linspace(0, turns * 2 * np.pi, int(40 * turns))
    r = t / t[-1]
    return [("line", np.stack([r * np.cos(t), r * np.sin(t)], axis=1))]


def _zigzag(rng: np.random.Generator) -> list[Stroke]:
    n = int(rng.integers(5, 8))
    x = np.linspace(-1, 1, n)
    y = np.where(np.arange(n) % 2 == 0, 0.35, -0.35)
    return [("line", np.stack([x, y], axis=1))]


def _wave(rng: np.random.Generator) -> list[Stroke]:
    x = np.linspace(-1, 1, 48)
    return [("line", np.stack([x, 0.3 * np.sin(x * np.pi * _u(rng, 1.5, 2.5))], axis=1))]


def _infinity(rng: np.random.Generator) -> list[Stroke]:
    t = np.linspace(0, 2 * np.pi, 60)[:-1]
    d = 1 + np.sin(t) ** 2
    return [("closed", np.stack([np.cos(t) / d, 1.2 * np.sin(t) * np.cos(t) / d], axis=1))]


def _smiley(rng: np.random.Generator) -> list[Stroke]:
    return [
        ellipse(0, 0, 1, 1),
        dot(-0.35, -0.3),
        dot(0.35, -0.3),
        ("line", arc(0, 0.05, 0.55, 0.45, 25, 155, 14)),
    ]


def _fish(rng: np.random.Generator) -> list[Stroke]:
    body = np.concatenate([arc(0, 0.45, 0.9, 0.9, -150, -30, 14), arc(0, -0.45, 0.9, 0.9, 30, 150, 14)])
    return [("closed", body - [0.2, 0]), closed(0.55, 0, 1.0, -0.4, 1.0, 0.4), dot(-0.65, -0.1)]


def _lightning(rng: np.random.Generator) -> list[Stroke]:
    return [closed(0.2, -1, -0.45, 0.1, -0.05, 0.1, -0.3, 1, 0.45, -0.15, 0.05, -0.15, 0.45, -1)]


def _moon(rng: np.random.Generator) -> list[Stroke]:
    shift = _u(rng, 0.35, 0.55)
    inner = arc(shift, 0, 0.85, 0.85, 250, 110, 18)  # the cut, traced back from top to bottom
    return [("closed", np.concatenate([arc(0, 0, 1, 1, 60, 300, 24), inner]))]


def _tree(rng: np.random.Generator) -> list[Stroke]:
    t = np.linspace(0, 2 * np.pi, 60)[:-1]
    r = 0.8 + 0.2 * np.abs(np.sin(int(rng.integers(3, 6)) * t))  # a bumpy crown, not a balloon
    crown = np.stack([0.8 * r * np.cos(t), -0.35 + 0.65 * r * np.sin(t)], axis=1)
    return [("closed", crown), line(-0.2, 1, -0.2, 0.25), line(0.2, 1, 0.2, 0.25), line(-0.2, 1, 0.2, 1)]


def _car(rng: np.random.Generator) -> list[Stroke]:
    body = closed(-1, 0.4, -1, 0, -0.5, 0, -0.3, -0.45, 0.35, -0.45, 0.55, 0, 1, 0, 1, 0.4)
    return [body, ellipse(-0.55, 0.45, 0.22, 0.22), ellipse(0.55, 0.45, 0.22, 0.22)]


NAMED: dict[str, Template] = {
    "circle": lambda r: [ellipse(0, 0, 1, 1, _u(r, 0, 360))],
    "square": lambda r: [closed(-1, -1, 1, -1, 1, 1, -1, 1)],
    "triangle": lambda r: [regular(3)],
    "star": _star,
    "heart": _heart,
    "arrow": lambda r: [line(-1, 0, 1, 0), line(0.45, -0.45, 1, 0, 0.45, 0.45)],
    "moon": _moon,
    "cloud": _cloud,
    "sun": _sun,
    "house": lambda r: [
        closed(-0.7, 0, 0.7, 0, 0.7, 1, -0.7, 1),
        line(-0.85, 0.05, 0, -0.9, 0.85, 0.05),
        line(-0.15, 1, -0.15, 0.5, 0.15, 0.5, 0.15, 1),
    ],
    "tree": _tree,
    "fish": _fish,
    "smiley face": _smiley,
    "lightning": _lightning,
    "spiral": _spiral,
    "zigzag": _zigzag,
    "cross": lambda r: [line(-1, -1, 1, 1), line(1, -1, -1, 1)],
    "check mark": lambda r: [line(-0.8, 0, -0.3, 0.6, 0.8, -0.8)],
    "diamond": lambda r: [closed(0, -1, 0.6, 0, 0, 1, -0.6, 0)],
    "hexagon": lambda r: [regular(6, phase=0)],
    "pentagon": lambda r: [regular(5)],
    "plus": lambda r: [line(0, -1, 0, 1), line(-1, 0, 1, 0)],
    "wave": _wave,
    "infinity": _infinity,
    "target": lambda r: [ellipse(0, 0, 1, 1), ellipse(0, 0, 0.6, 0.6), ellipse(0, 0, 0.25, 0.25), dot(0, 0)],
    "hash": lambda r: [
        line(-0.35, -1, -0.35, 1),
        line(0.35, -1, 0.35, 1),
        line(-1, -0.35, 1, -0.35),
        line(-1, 0.35, 1, 0.35),
    ],
    "mountain": lambda r: [closed(-1, 0.6, -0.4, -0.5, 0, 0.1, 0.4, -0.8, 1, 0.6)],
    "snowman": lambda r: [
        ellipse(0, -0.55, 0.35, 0.35),
        ellipse(0, 0.35, 0.6, 0.6),
        dot(0, 0.2),
        dot(0, 0.5),
    ],
    "balloon": lambda r: [
        ellipse(0, -0.4, 0.55, 0.65),
        closed(0, 0.25, 0.1, 0.35, -0.1, 0.35),  # the knot
        line(0, 0.35, 0.15, 0.55, -0.15, 0.75, 0.1, 1),
    ],
    "eye": lambda r: [
        (
            "closed",
            np.concatenate([arc(0, 0.6, 1.15, 1.0, -150, -30, 14), arc(0, -0.6, 1.15, 1.0, 30, 150, 14)]),
        ),
        ellipse(0, 0, 0.3, 0.3),
        dot(0, 0),
    ],
    "flag": lambda r: [line(-0.6, 1, -0.6, -1), closed(-0.6, -1, 0.8, -0.7, -0.6, -0.3)],
    "sailboat": lambda r: [
        closed(-1, 0.5, 1, 0.5, 0.6, 0.95, -0.6, 0.95),
        line(0, 0.5, 0, -1),
        closed(0, -0.9, 0.7, 0.3, 0, 0.3),
    ],
    "clock": lambda r: [ellipse(0, 0, 1, 1), line(0, -0.65, 0, 0, 0.45, 0.2)],
    "lollipop": lambda r: [ellipse(0, -0.45, 0.55, 0.55), line(0, 0.1, 0, 1)],
    "car": _car,
    "raindrop": lambda r: [("closed", np.concatenate([_pts(0, -1), arc(0, 0.35, 0.6, 0.6, -20, 200, 20)]))],
    "mushroom": lambda r: [
        ("closed", np.concatenate([arc(0, 0, 1, 0.9, 180, 360, 18)])),
        line(-0.3, 0, -0.3, 0.8, 0.3, 0.8, 0.3, 0),
    ],
    "ice cream": lambda r: [
        ("line", arc(0, -0.3, 0.6, 0.6, 170, 370, 18)),
        line(-0.6, -0.2, 0, 1, 0.6, -0.2),
    ],
    "sword": lambda r: [line(0, -1, 0, 0.45), line(-0.4, 0.45, 0.4, 0.45), line(0, 0.45, 0, 1)],
    "pencil": lambda r: [closed(-1, -0.2, 0.5, -0.2, 1, 0, 0.5, 0.2, -1, 0.2), line(0.5, -0.2, 0.5, 0.2)],
    "question mark": lambda r: [
        ("line", np.concatenate([arc(0, -0.45, 0.45, 0.45, 180, 400, 16), _pts(0, 0.45)])),
        dot(0, 0.9),
    ],
    "exclamation mark": lambda r: [line(0, -1, 0, 0.45), dot(0, 0.9)],
    "tv": lambda r: [closed(-1, -0.3, 1, -0.3, 1, 0.9, -1, 0.9), line(-0.45, -1, 0, -0.3, 0.45, -1)],
}


# --- novel labels: never used in pretraining ----------------------------------------------------


def _umbrella(rng: np.random.Generator) -> list[Stroke]:
    canopy = arc(0, 0, 1, 0.8, 180, 360, 18)
    scallops = np.concatenate([arc(x, 0, 0.25, 0.15, 0, 180, 6) for x in (0.75, 0.25, -0.25, -0.75)])
    return [
        ("closed", np.concatenate([canopy, scallops])),
        ("line", np.concatenate([_pts(0, 0), arc(0.15, 0.85, 0.15, 0.15, 0, 180, 8)])),
    ]


def _key(rng: np.random.Generator) -> list[Stroke]:
    return [ellipse(-0.7, 0, 0.3, 0.3), line(-0.4, 0, 1, 0), line(0.7, 0, 0.7, 0.3), line(0.9, 0, 0.9, 0.25)]


def _flower(rng: np.random.Generator) -> list[Stroke]:
    petals = int(rng.integers(5, 8))
    out = [ellipse(0, -0.35, 0.15, 0.15), line(0, 0.05, 0, 1), line(0, 0.7, 0.3, 0.5)]
    for a in np.linspace(0, 360, petals + 1)[:-1]:
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        pts = arc(0, 0, 0.22, 0.1, 0, 360, 14)
        rot = pts @ np.array([[c, s], [-s, c]]) + [0.38 * c, -0.35 + 0.38 * s]
        out.append(("closed", rot))
    return out


def _bell(rng: np.random.Generator) -> list[Stroke]:
    body = np.concatenate([_pts(-0.8, 0.6), arc(0, -0.3, 0.55, 0.6, 180, 360, 16), _pts(0.8, 0.6)])
    return [("closed", body), dot(0, 0.85), line(0, -0.9, 0, -1)]


def _cup(rng: np.random.Generator) -> list[Stroke]:
    return [
        line(-0.7, -0.7, -0.55, 0.8, 0.45, 0.8, 0.6, -0.7),
        ("line", arc(0.6, -0.05, 0.35, 0.35, -80, 80, 12)),
    ]


def _anchor(rng: np.random.Generator) -> list[Stroke]:
    return [
        ellipse(0, -0.85, 0.15, 0.15),
        line(0, -0.7, 0, 0.95),
        line(-0.45, -0.4, 0.45, -0.4),
        ("line", arc(0, 0.3, 0.75, 0.65, 10, 170, 16)),
    ]


def _leaf(rng: np.random.Generator) -> list[Stroke]:
    body = np.concatenate([arc(0, 0.7, 1.2, 1.2, -145, -35, 12), arc(0, -0.7, 1.2, 1.2, 35, 145, 12)])
    veins = [line(x, 0, x + 0.25, -0.3 * (1 if i % 2 else -1)) for i, x in enumerate((-0.5, -0.2, 0.1, 0.4))]
    return [("closed", body), line(-1.2, 0.1, 0.9, 0), *veins]


def _ghost(rng: np.random.Generator) -> list[Stroke]:
    top = arc(0, -0.2, 0.7, 0.8, 180, 360, 16)
    bottom = np.stack([np.linspace(0.7, -0.7, 9), 0.9 - 0.15 * (np.arange(9) % 2)], axis=1)
    return [
        ("closed", np.concatenate([top, bottom])),
        ellipse(-0.25, -0.3, 0.1, 0.15),
        ellipse(0.25, -0.3, 0.1, 0.15),
    ]


NOVEL: dict[str, Template] = {
    "umbrella": _umbrella,
    "key": _key,
    "flower": _flower,
    "bell": _bell,
    "glasses": lambda r: [
        ellipse(-0.55, 0, 0.38, 0.3),
        ellipse(0.55, 0, 0.38, 0.3),
        ("line", arc(0, 0.05, 0.17, 0.15, 200, 340, 6)),
        line(-0.93, 0, -1.1, -0.3),
        line(0.93, 0, 1.1, -0.3),
    ],
    "cup": _cup,
    "bicycle": lambda r: [
        ellipse(-0.6, 0.4, 0.4, 0.4),
        ellipse(0.6, 0.4, 0.4, 0.4),
        line(-0.6, 0.4, -0.1, -0.2, 0.45, -0.2, 0.6, 0.4),
        line(-0.1, -0.2, 0, 0.4, 0.45, -0.2),
        line(0.45, -0.2, 0.4, -0.45, 0.55, -0.45),
    ],
    "envelope": lambda r: [closed(-1, -0.6, 1, -0.6, 1, 0.6, -1, 0.6), line(-1, -0.6, 0, 0.15, 1, -0.6)],
    "music note": lambda r: [
        ("blob", arc(-0.3, 0.7, 0.3, 0.22, 0, 360, 14)),
        line(0, 0.65, 0, -1, 0.45, -0.55),
    ],
    "hourglass": lambda r: [
        line(-0.6, -1, 0.6, -1),
        line(-0.6, 1, 0.6, 1),
        closed(-0.5, -1, 0.5, -1, -0.5, 1, 0.5, 1),
    ],
    "anchor": _anchor,
    "leaf": _leaf,
    "crown": lambda r: [closed(-0.9, 0.5, -1, -0.6, -0.5, -0.1, 0, -0.8, 0.5, -0.1, 1, -0.6, 0.9, 0.5)],
    "ladder": lambda r: [
        line(-0.4, -1, -0.4, 1),
        line(0.4, -1, 0.4, 1),
        *[line(-0.4, y, 0.4, y) for y in (-0.65, -0.2, 0.25, 0.7)],
    ],
    "candle": lambda r: [
        closed(-0.3, -0.3, 0.3, -0.3, 0.3, 1, -0.3, 1),
        closed(0, -1, 0.15, -0.6, 0, -0.4, -0.15, -0.6),
    ],
    "cat face": lambda r: [
        ellipse(0, 0.1, 0.9, 0.75),
        line(-0.75, -0.25, -0.6, -0.95, -0.2, -0.6),
        line(0.75, -0.25, 0.6, -0.95, 0.2, -0.6),
        dot(-0.3, 0),
        dot(0.3, 0),
        line(-0.15, 0.3, -1.1, 0.2),
        line(0.15, 0.3, 1.1, 0.2),
    ],
    "ghost": _ghost,
}
