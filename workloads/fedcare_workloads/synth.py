"""Synthetic B-mode ultrasound datasets in the documented on-disk format.

Each image is rendered as an echogenicity map (skin line, subcutaneous fat,
fascia, glandular tissue, muscle with striations; boundaries curved), then
imaged by a "probe": multiplicative speckle (Rayleigh magnitude of a complex
Gaussian field blurred by the probe's point-spread function), depth
attenuation, gain, log compression, electronic noise and, for curvilinear
probes, a fan-shaped field of view.

* normal:    no lesion; sometimes a faint, flat fat lobule (a decoy).
* benign:    oval, wider-than-tall, smooth margin, homogeneous hypoechoic
             interior, posterior acoustic enhancement.
* malignant: irregular / spiculated margin, taller-than-wide, heterogeneous
             interior, echogenic halo, posterior acoustic shadowing.

Sites differ by probe and by label mix, so a federation built from them is
non-IID. Every image has its own random stream seeded by (seed, site, index):
the same arguments always give byte-identical files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import DEFAULT_CLASSES

GENERATOR = "fedcare-synth/1"


@dataclass(frozen=True)
class Probe:
    name: str
    gain: float  # overall brightness
    attenuation: float  # exp(-attenuation * depth), depth in [0, 1]
    psf: float  # speckle grain (Gaussian PSF sigma) in pixels at 64 px
    noise: float  # additive electronic noise (std, display units)
    compression: float  # log-compression strength
    sector: bool  # curvilinear probe: fan-shaped field of view


PROBES = (
    Probe("linear-12MHz", gain=1.00, attenuation=0.6, psf=0.6, noise=0.02, compression=8.0, sector=False),
    Probe("curvilinear-5MHz", gain=1.20, attenuation=1.6, psf=1.1, noise=0.04, compression=5.0, sector=True),
    Probe("portable-7MHz", gain=0.80, attenuation=1.0, psf=0.85, noise=0.08, compression=3.0, sector=False),
)
# Label mix per site (normal, benign, malignant): screening clinic, referral
# centre, oncology centre.
LABEL_MIX = ((0.55, 0.30, 0.15), (0.20, 0.50, 0.30), (0.25, 0.25, 0.50))
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


@dataclass(frozen=True)
class SiteSpec:
    name: str
    probe: Probe
    label_mix: tuple[float, ...]


def default_sites(n: int, seed: int = 0) -> list[SiteSpec]:
    """Sites 0..2 use the three reference probes; further sites perturb them."""
    sites = []
    for i in range(n):
        base, mix = PROBES[i % 3], LABEL_MIX[i % 3]
        if i >= 3:
            rng = np.random.default_rng([seed, 10_000 + i])
            base = Probe(
                f"{base.name}-v{i}",
                gain=float(base.gain * rng.uniform(0.85, 1.15)),
                attenuation=float(base.attenuation * rng.uniform(0.8, 1.2)),
                psf=float(base.psf * rng.uniform(0.85, 1.15)),
                noise=float(base.noise * rng.uniform(0.7, 1.3)),
                compression=float(base.compression * rng.uniform(0.8, 1.2)),
                sector=base.sector,
            )
            mix = tuple(float(x) for x in rng.dirichlet(np.array(mix) * 8))
        sites.append(SiteSpec(f"site-{chr(ord('a') + i) if i < 26 else i}", base, mix))
    return sites


def _blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur via FFT (periodic borders are fine for texture)."""
    if sigma <= 0:
        return field
    h, w = field.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.real(np.fft.ifft2(np.fft.fft2(field) * kernel))


def _step_down(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(z)) without overflow: 1 inside a shape (z < 0), 0 outside."""
    return 0.5 * (1.0 - np.tanh(0.5 * z))


def _tissue(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    texture = _blur(rng.standard_normal((size, size)), size / 16)
    texture /= texture.std() + 1e-9
    phase, wave = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.6)
    y_fat = rng.uniform(0.18, 0.30) + 0.03 * np.sin(2 * np.pi * wave * x + phase)
    y_muscle = rng.uniform(0.72, 0.86) + 0.03 * np.sin(2 * np.pi * wave * x + phase + 1.0)
    echo = np.full((size, size), 0.62) + 0.08 * texture  # glandular tissue
    echo = np.where(y < y_fat, 0.32 + 0.06 * texture, echo)  # subcutaneous fat
    echo = np.where(y > y_muscle, 0.42 + 0.08 * np.sin(y * size * 1.3) + 0.05 * texture, echo)
    echo += 0.55 * np.exp(-(((y - 0.035) / 0.012) ** 2))  # skin line
    echo += 0.35 * np.exp(-(((y - y_fat) / 0.012) ** 2))  # superficial fascia
    echo += 0.30 * np.exp(-(((y - y_muscle) / 0.012) ** 2))  # deep fascia
    return echo, float(np.mean(y_fat)), float(np.mean(y_muscle))


def _lesion(rng: np.random.Generator, echo: np.ndarray, x, y, label: str, top: float, bottom: float) -> np.ndarray:
    size = echo.shape[0]
    edge = 1.5 / size  # margin width of a smooth lesion
    cx = rng.uniform(0.3, 0.7)
    cy = rng.uniform(top + 0.12, max(top + 0.13, bottom - 0.15))
    r0 = rng.uniform(0.09, 0.15)
    dx, dy = x - cx, y - cy
    if label == "normal":
        if rng.random() < 0.6:  # flat, faint fat lobule: a decoy, no posterior effect
            a, b = r0 * rng.uniform(1.4, 2.0), r0 * rng.uniform(0.35, 0.55)
            inside = _step_down(((dx / a) ** 2 + (dy / b) ** 2 - 1.0) / 0.15)
            echo = echo * (1 - 0.35 * inside)
        return echo
    if label == "benign":
        a, b = r0 * rng.uniform(1.2, 1.6), r0 / rng.uniform(1.0, 1.25)
        dist = np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1.0
        inside = _step_down(dist * min(a, b) / edge)
        echo = echo * (1 - inside) + rng.uniform(0.05, 0.15) * inside
        below = (y > cy) * np.exp(-((dx / (a * 0.9)) ** 4)) * np.exp(-(y - cy - b) / 0.3)
        return echo * (1 + 0.45 * np.clip(below, 0, 1) * (1 - inside))  # posterior enhancement
    # malignant
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for k in range(3, 12):
        radius += rng.uniform(0.0, 0.10) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    taller = rng.uniform(1.1, 1.4)
    rho = np.sqrt(dx**2 + (dy / taller) ** 2) / (r0 * radius)
    inside = (rho < 1.0).astype(np.float64)
    halo = np.exp(-(((rho - 1.08) / 0.08) ** 2))
    interior = rng.uniform(0.06, 0.16) + 0.08 * np.clip(_blur(rng.standard_normal((size, size)), 1.0), -1, 1)
    echo = echo * (1 - inside) + interior * inside + 0.25 * halo * (1 - inside)
    shadow = (y > cy) * np.exp(-((dx / (r0 * 0.8)) ** 4))
    return echo * (1 - 0.5 * np.clip(shadow, 0, 1))  # posterior acoustic shadowing


def render_image(rng: np.random.Generator, label: str, probe: Probe, size: int) -> np.ndarray:
    """One uint8 [size, size] B-mode image."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    echo, top, bottom = _tissue(rng, x, y, size)
    echo = _lesion(rng, echo, x, y, label, top, bottom)
    psf = probe.psf * size / 64.0
    # Spatial compounding (3 looks) softens speckle the way scanners do.
    looks = rng.standard_normal((3, 2, size, size))
    speckle = np.abs(_blur(looks[:, 0] + 1j * looks[:, 1], psf)).mean(axis=0)
    speckle /= speckle.mean() + 1e-12
    intensity = np.clip(echo, 0, None) * speckle * probe.gain * np.exp(-probe.attenuation * y)
    img = np.log1p(probe.compression * intensity) / np.log1p(probe.compression * 1.6)
    img += probe.noise * rng.standard_normal((size, size))
    if probe.sector:  # fan-shaped field of view of a curvilinear probe
        ax, ay = 0.5, -0.35
        angle = np.arctan2(x - ax, y - ay)
        r = np.hypot(x - ax, y - ay)
        img = np.where((np.abs(angle) < 0.62) & (r > 0.4) & (r < 1.38), img, 0.0)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=6)


def write_dataset(
    out: Path,
    name: str,
    items: list[tuple[str, str, str, Probe, np.random.Generator]],
    size: int,
    meta: dict,
) -> dict:
    """items: (id, label, split, probe, rng). Writes labels.csv, images/, dataset.json."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for rid, label, split, probe, rng in items:
        _write_png(out / "images" / f"{rid}.png", render_image(rng, label, probe, size))
        rows.append((rid, label, split))
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label", "split"])
        writer.writerows(rows)
    counts: dict[str, dict[str, int]] = {}
    for _, label, split in rows:
        counts.setdefault(split, {}).setdefault(label, 0)
        counts[split][label] += 1
    summary = {"generator": GENERATOR, "name": name, "image_size": size, "images": len(rows), "counts": counts, **meta}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def generate_site(out: Path, site: SiteSpec, index: int, n: int, size: int, seed: int, classes=DEFAULT_CLASSES) -> dict:
    site_rng = np.random.default_rng([seed, index])
    labels = site_rng.choice(len(classes), size=n, p=np.asarray(site.label_mix) / sum(site.label_mix))
    order = site_rng.permutation(n)
    splits = np.empty(n, dtype=object)
    start = 0
    for i, (split, frac) in enumerate(SPLIT_FRACTIONS):
        stop = n if i == len(SPLIT_FRACTIONS) - 1 else start + int(round(frac * n))
        splits[order[start:stop]] = split
        start = stop
    items = [
        (f"{site.name}-{i:05d}", classes[labels[i]], splits[i], site.probe, np.random.default_rng([seed, index, i]))
        for i in range(n)
    ]
    meta = {"site": site.name, "probe": asdict(site.probe), "label_mix": list(site.label_mix), "seed": seed}
    return write_dataset(out, site.name, items, size, meta)


def generate_holdout(out: Path, n: int, size: int, seed: int, sites: list[SiteSpec], classes=DEFAULT_CLASSES) -> dict:
    """Balanced classes, probes drawn from all sites, every row split=test."""
    rng = np.random.default_rng([seed, 99_999])
    labels = np.arange(n) % len(classes)
    probes = rng.integers(0, len(sites), size=n)
    items = [
        (
            f"holdout-{i:05d}",
            classes[labels[i]],
            "test",
            sites[probes[i]].probe,
            np.random.default_rng([seed, 99_999, i]),
        )
        for i in range(n)
    ]
    return write_dataset(out, "holdout", items, size, {"seed": seed, "probes": sorted({s.probe.name for s in sites})})


def generate_federation(
    out: Path | str,
    num_sites: int = 3,
    images_per_site: int = 300,
    holdout: int = 300,
    image_size: int = 64,
    seed: int = 0,
) -> dict:
    out = Path(out)
    if num_sites < 1 or images_per_site < 1 or image_size < 16 or holdout < 0:
        raise ValueError("need num_sites >= 1, images_per_site >= 1, holdout >= 0 and image_size >= 16")
    sites = default_sites(num_sites, seed)
    summary = {
        s.name: generate_site(out / s.name, s, i, images_per_site, image_size, seed) for i, s in enumerate(sites)
    }
    if holdout:
        summary["holdout"] = generate_holdout(out / "holdout", holdout, image_size, seed, sites)
    return summary
