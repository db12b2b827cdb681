"""One clear line per Azure failure, naming the fix (unit level; the jobs' tests cover the wire)."""

from __future__ import annotations

from azure.core.exceptions import HttpResponseError

from collector.errors import describe_azure_error


def test_an_error_without_an_http_answer_reads_as_a_credential_problem() -> None:
    exc = HttpResponseError(
        message="DefaultAzureCredential failed to retrieve a token from the included credentials."
    )
    line = describe_azure_error(exc, source="live search", scope="workspace-a")
    assert line.startswith("live search on workspace-a: no Azure credential could get a token")
    assert "HTTP None" not in line and "\n" not in line


def test_live_search_403_names_the_log_analytics_role() -> None:
    class Response:
        status_code = 403
        reason = "Forbidden"
        headers = {"x-ms-request-id": "abc"}

        def text(self) -> str:
            return ""

    exc = HttpResponseError(message="forbidden", response=Response())
    line = describe_azure_error(exc, source="live search", scope="workspace-a")
    assert "403 forbidden" in line and "Log Analytics Reader on the workspace" in line
