"""kopf settings shared by the hub and the site agent: our own names, bounded retries."""

from __future__ import annotations

import kopf

from ..api.resources import ANNOTATION_PREFIX, FINALIZER


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    # Bodies are small (no pod templates in our specs), but keep kopf's state out of status.
    settings.posting.level = 30                 # post WARNING and above as Events
    settings.posting.reporting_component = "fedcare"
    settings.posting.event_name_prefix = "fedcare-"
    settings.watching.server_timeout = 300      # re-list at least every 5 minutes
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]   # bounded API retry inside kopf
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]   # bounded back-off for watch errors
