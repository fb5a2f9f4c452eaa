"""Accuracy against generated tokens as a self-contained SVG: one point per configuration, baselines marked.

Written by hand (no plotting library in the service's dependencies): a handful of labelled points on two linear
axes is all the picture needs, and the file renders anywhere, including a README on GitHub.
"""

from __future__ import annotations

import math
from html import escape

from rsa_service.comparison import Comparison

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 50, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
BASELINE_COLOUR = "#555555"


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _range(values: list[float], pad: float) -> tuple[float, float, float]:
    low, high = min(values), max(values)
    span = max(high - low, pad)
    step = _nice_step(span * 1.2)
    return math.floor((low - span * 0.1) / step) * step, math.ceil((high + span * 0.1) / step) * step, step


def _ticks(low: float, high: float, step: float) -> list[float]:
    count = round((high - low) / step)
    return [low + i * step for i in range(count + 1)]


def accuracy_svg(comparison: Comparison) -> str:
    """The SVG document: x = generated tokens (thousands), y = final accuracy (%)."""
    points = [(c.name, c.generated_tokens / 1000, c.final_accuracy * 100) for c in comparison.configurations]
    marks = [(b.name, b.generated_tokens / 1000, b.accuracy * 100) for b in comparison.baselines]
    everything = points + marks
    x_low, x_high, x_step = _range([x for _, x, _ in everything] + [0.0], 1.0)
    x_low = max(x_low, 0.0)
    y_low, y_high, y_step = _range([y for _, _, y in everything], 2.0)
    y_low = max(y_low, 0.0)

    def px(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y_low) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)

    title = (
        f"Accuracy vs generated tokens: {comparison.problems} problems, N={comparison.population} "
        f"K={comparison.subset} T={comparison.rounds}, seed {comparison.seed}"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for x in _ticks(x_low, x_high, x_step):
        parts.append(f'<line x1="{px(x):.1f}" y1="{TOP}" x2="{px(x):.1f}" y2="{HEIGHT - BOTTOM}" stroke="#eee"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{x:g}</text>')
    for y in (tick for tick in _ticks(y_low, y_high, y_step) if tick <= 100):
        parts.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{WIDTH - RIGHT}" y2="{py(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    parts += [
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="none" stroke="#333"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 18}" text-anchor="middle">'
        "generated tokens (thousands, all problems)</text>",
        f'<text transform="translate(18 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
        "final accuracy (%)</text>",
    ]
    legend: list[tuple[str, str]] = []
    for index, (name, x, y) in enumerate(points):
        colour = COLOURS[index % len(COLOURS)]
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="6" fill="{colour}" fill-opacity="0.8"/>')
        legend.append((_circle(0, 0, colour), f"{name}: {y:.1f}%, {x:,.1f}K tokens"))
    for index, (name, x, y) in enumerate(marks):
        shape = _diamond if index == 0 else _square
        parts.append(shape(px(x), py(y)))
        legend.append((shape(0, 0), f"{name}: {y:.1f}%, {x:,.1f}K tokens"))
    # The legend sits in the lower right, where a point (low accuracy for many tokens) would be a poor result.
    top = HEIGHT - BOTTOM - 12 - 18 * len(legend)
    left = WIDTH - RIGHT - 250
    parts.append(
        f'<rect x="{left - 10}" y="{top - 14}" width="252" height="{18 * len(legend) + 8}" fill="white" '
        'fill-opacity="0.9" stroke="#ccc"/>'
    )
    for row, (marker, text) in enumerate(legend):
        y = top + 18 * row
        parts.append(f'<g transform="translate({left} {y - 4})">{marker}</g>')
        parts.append(f'<text x="{left + 14}" y="{y}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _circle(x: float, y: float, colour: str) -> str:
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}" fill-opacity="0.8"/>'


def _diamond(x: float, y: float, size: float = 6) -> str:
    corners = ((x, y - size), (x + size, y), (x, y + size), (x - size, y))
    points = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in corners)
    return f'<polygon points="{points}" fill="none" stroke="{BASELINE_COLOUR}" stroke-width="2"/>'


def _square(x: float, y: float, size: float = 5) -> str:
    return (
        f'<rect x="{x - size:.1f}" y="{y - size:.1f}" width="{2 * size}" height="{2 * size}" fill="none" '
        f'stroke="{BASELINE_COLOUR}" stroke-width="2"/>'
    )
