"""Construction of the official Azure SDK clients, configured once from the settings.

Every endpoint and token audience comes from the settings, so sovereign clouds and the local
emulator work with the same code. Each job gets a fresh ``AzureClients`` so its API-call counter
is its own; the credential (and its token cache) is shared.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy
from azure.identity import DefaultAzureCredential

from models.settings import Settings

#: Cost Management announces its back-off in its own headers, not in Retry-After.
COST_RETRY_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-client-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-clienttype-retry-after",
    "x-ms-ratelimit-microsoft.consumption-retry-after",
)
#: The metrics batch API throttles with 529.
EXTRA_RETRY_STATUS = [529]


class AzureRetryPolicy(RetryPolicy):
    """azure-core's retry, also honouring Cost Management's retry-after headers.

    azure-core retries a POST only on 500/503/504 or with a Retry-After header; the metrics
    batch, Log Analytics and Cost Management queries are POSTs that only read, so a 429/529
    without Retry-After is retried too.
    """

    def _is_method_retryable(self, settings: Any, request: Any, response: Any = None) -> bool:
        return True

    def get_retry_after(self, response: PipelineResponse) -> float | None:
        headers = response.http_response.headers
        for name in COST_RETRY_HEADERS:
            value = headers.get(name)
            if value:
                try:
                    return float(value)
                except ValueError:
                    continue
        return super().get_retry_after(response)


class CallCounter(SansIOHTTPPolicy):
    """Counts HTTP calls (retries included) and keeps Azure's request ids of failed calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed_request_ids: list[str] = []
        self._lock = threading.Lock()

    def on_request(self, request: PipelineRequest) -> None:
        with self._lock:
            self.calls += 1

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        http = response.http_response
        if http.status_code >= 400:
            headers = http.headers
            rid = headers.get("x-ms-request-id") or headers.get("request-id") or ""
            if rid:
                with self._lock:
                    self.failed_request_ids.append(rid)


def make_credential(settings: Settings) -> TokenCredential:
    """DefaultAzureCredential: env service principal, workload/managed identity, az login…"""
    return DefaultAzureCredential(connection_verify=settings.tls_verify())


@dataclass
class AzureClients:
    """Factory of SDK clients sharing one credential and one call counter."""

    settings: Settings
    credential: TokenCredential
    counter: CallCounter = field(default_factory=CallCounter)

    def _common(self, audience: str) -> dict[str, Any]:
        return {
            "connection_verify": self.settings.tls_verify(),
            "connection_timeout": 10,
            "read_timeout": 120,
            "retry_policy": AzureRetryPolicy(
                retry_total=4,
                retry_backoff_factor=1.0,
                retry_backoff_max=60,
                retry_on_status_codes=EXTRA_RETRY_STATUS,
            ),
            "per_retry_policies": [self.counter],
            "credential_scopes": [self.settings.scope_for(audience)],
        }

    def cognitive(self, subscription_id: str) -> Any:
        from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient

        return CognitiveServicesManagementClient(
            self.credential,
            subscription_id,
            base_url=self.settings.arm_endpoint,
            **self._common(self.settings.arm_audience),
        )

    def monitor(self, subscription_id: str) -> Any:
        from azure.mgmt.monitor import MonitorManagementClient

        return MonitorManagementClient(
            self.credential,
            subscription_id,
            base_url=self.settings.arm_endpoint,
            **self._common(self.settings.arm_audience),
        )

    def log_analytics(self, subscription_id: str) -> Any:
        from azure.mgmt.loganalytics import LogAnalyticsManagementClient

        return LogAnalyticsManagementClient(
            self.credential,
            subscription_id,
            base_url=self.settings.arm_endpoint,
            **self._common(self.settings.arm_audience),
        )

    def costs(self) -> Any:
        from azure.mgmt.costmanagement import CostManagementClient

        return CostManagementClient(
            self.credential,
            base_url=self.settings.arm_endpoint,
            **self._common(self.settings.arm_audience),
        )

    def metrics(self, region: str) -> Any:
        from azure.monitor.querymetrics import MetricsClient

        common = self._common(self.settings.metrics_audience)
        return MetricsClient(
            self.settings.metrics_endpoint.format(region=region), self.credential, **common
        )

    def logs(self) -> Any:
        from azure.monitor.query import LogsQueryClient

        return LogsQueryClient(
            self.credential,
            endpoint=self.settings.logs_endpoint,
            **self._common(self.settings.logs_audience),
        )
