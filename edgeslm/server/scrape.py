"""GET /metrics: the Prometheus text exposition of the daemon's metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from edgeslm.metrics.prom import CONTENT_TYPE
from edgeslm.metrics.service import Metrics
from edgeslm.server.bridge import error_response


class MetricsEndpoint:
    """Serves `metrics.prom`, or a 404 that says how to turn metrics on."""

    def __init__(self, metrics: Metrics | None):
        self.metrics = metrics

    async def serve(self, request: Request) -> Response:
        if self.metrics is None:
            return error_response(404, "metrics_disabled", "metrics are turned off; set [metrics] enabled = true "
                                  "(or EDGESLM_METRICS_ENABLED=true) and restart the daemon", kind="not_found_error")
        return Response(self.metrics.prom.exposition(), media_type=CONTENT_TYPE)
