"""The sandbox kubelet's image table: which container images it can run, and as what.

There are no container images on this machine, so the process kubelet maps an image to a
local environment through this ONE explicit table. An image not in it is never run: its
container waits with reason ``ErrImagePull`` and a message naming the image and this table,
as a real kubelet reports an image it cannot pull.

=================================================  =========================================
image (any registry tag ``:x`` or digest ``@sha256:…``)  runs as
=================================================  =========================================
``fedcare`` (the chart's ``image.repository``)     this checkout's virtualenv; default
                                                   command ``fedcare --help`` (the
                                                   Dockerfile's ENTRYPOINT and CMD)
``ghcr.io/fedcare/ultrasound-train``               this checkout's virtualenv; no default
                                                   command (set ``command``)
=================================================  =========================================

"This checkout's virtualenv" means: its ``bin`` directory first on ``PATH`` (so
``flower-superlink``, ``flower-supernode``, ``flwr``, ``fedcare`` and ``python`` resolve to
the venv), and ``PYTHONPATH`` set to the source folders the kubelet itself imported
``fedcare`` (and ``fedcare_workloads``) from, so a container runs the same code as the
kubelet that started it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from dataclasses import dataclass, field

__all__ = ["IMAGES", "Image", "ImageNotFound", "repository_of", "resolve_image", "venv_environment"]


@dataclass(frozen=True)
class Image:
    """What a known image provides: its default ENTRYPOINT/CMD and environment."""

    repository: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class ImageNotFound(Exception):
    """The image is not in the sandbox image table (reported as ErrImagePull)."""


_PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}

#: The table. Keys are repositories without tag or digest.
IMAGES: dict[str, Image] = {
    "fedcare": Image("fedcare", entrypoint=("fedcare",), cmd=("--help",), env=_PYTHON_ENV),
    "ghcr.io/fedcare/ultrasound-train": Image("ghcr.io/fedcare/ultrasound-train", env=_PYTHON_ENV),
}


def repository_of(image: str) -> str:
    """``ghcr.io/x/y:1.0@sha256:…`` → ``ghcr.io/x/y`` (a ``:`` in the registry host is a port)."""
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def resolve_image(image: str) -> Image:
    """The table entry for ``image``, or :class:`ImageNotFound` with an actionable message."""
    if not image:
        raise ImageNotFound("the container has no image")
    repo = repository_of(image.strip())
    if repo in IMAGES:
        return IMAGES[repo]
    known = ", ".join(sorted(IMAGES))
    raise ImageNotFound(f'image "{image}" is not in the sandbox kubelet\'s image table (known repositories, '
                        f"any tag or digest: {known}); add it to fedcare/sandbox/kubelet_images.py IMAGES "
                        "or use one of those images")


def _source_roots() -> list[str]:
    roots: list[str] = []
    for module in ("fedcare", "fedcare_workloads"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            root = str(pathlib.Path(list(spec.submodule_search_locations)[0]).resolve().parent)
            if root not in roots:
                roots.append(root)
    return roots


def venv_bin() -> pathlib.Path:
    """The bin directory of the virtualenv the kubelet runs in (``sys.prefix`` is the venv)."""
    return pathlib.Path(sys.prefix) / "bin"


def venv_environment() -> dict[str, str]:
    """PATH and PYTHONPATH of "this checkout's virtualenv" (see the module docstring)."""
    system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"PATH": f"{venv_bin()}{os.pathsep}{system_path}"}
    roots = _source_roots()
    if roots:
        env["PYTHONPATH"] = os.pathsep.join(roots)
    return env
