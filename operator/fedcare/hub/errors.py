"""Map what went wrong to what kopf should do: never a crash loop, never a retry storm."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import kopf

from .. import metrics
from ..api.validation import SpecError
from ..integrations.kube import KubeError

MAX_DELAY = 300.0


def retry_delay(retry: int) -> float:
    """5 s, 10 s, 20 s … capped at 5 minutes: a broken API server is not hammered."""
    return min(MAX_DELAY, 5.0 * 2 ** min(retry, 10))


@contextlib.asynccontextmanager
async def handled(body: Any, retry: int, logger: logging.Logger) -> AsyncIterator[None]:
    """Map errors for kopf, and time the reconcile (``fedcare_reconcile_*``, by kind)."""
    kind = str(body.get("kind") or "Unknown")
    if kind not in metrics.KINDS:
        kind = "Unknown"
    started = time.perf_counter()
    try:
        yield
    except SpecError as err:
        metrics.RECONCILE_ERRORS_TOTAL.labels(kind, "InvalidSpec").inc()
        kopf.warn(body, reason="InvalidSpec", message=err.summary())
        raise kopf.PermanentError(err.summary()) from None
    except KubeError as err:
        metrics.RECONCILE_ERRORS_TOTAL.labels(kind, "APIError").inc()
        delay = retry_delay(retry)
        logger.warning("Kubernetes API call failed (%s); retrying in %.0fs", err, delay)
        raise kopf.TemporaryError(str(err), delay=delay) from None
    except Exception:
        metrics.RECONCILE_ERRORS_TOTAL.labels(kind, "Unexpected").inc()
        raise
    finally:
        metrics.RECONCILE_DURATION.labels(kind).observe(time.perf_counter() - started)
