"""Start a run from given weights: a safetensors file pinned by its sha256 (run-config
``initial-model`` / ``initial-model-sha256``), e.g. an earlier round's released model.

The file's bytes are hashed before they are parsed, so a file that changed since it was
released is refused instead of silently trained on; its tensors must have exactly the
names, shapes and dtypes of the architecture the run builds.
"""

from __future__ import annotations

from pathlib import Path

from .hashing import bytes_sha256
from .records import check_layout, load_arrays_into, state_to_arrays


class InitialModelError(ValueError):
    """The initial model cannot be used: missing, changed since it was pinned, or another architecture."""


def load_initial_model(model, path: str, sha256: str) -> str:
    """Load the pinned file's weights into ``model``; returns the file's sha256."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InitialModelError(f"initial-model: cannot read the file ({exc.strerror}); is the artifact store "
                                "mounted and the release's artifact still there?") from None
    actual = bytes_sha256(data)
    if actual != sha256:
        raise InitialModelError(f"initial-model: the file's sha256 is {actual}, but it is pinned to {sha256}: "
                                "it changed since it was released; refusing to train on it")
    try:
        arrays = load(data)
    except SafetensorError as exc:
        raise InitialModelError(f"initial-model: not a safetensors file ({exc})") from None
    try:
        check_layout(arrays, state_to_arrays(model), "initial model")
    except ValueError as exc:
        raise InitialModelError(f"initial-model: {exc}; start from a release of the same architecture, "
                                "classes and input size") from None
    load_arrays_into(model, arrays)
    return actual
