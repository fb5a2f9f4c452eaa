"""The HTTP API: jobs, their event streams and steps, OpenAI-compatible chat completions, health and metrics, as
one FastAPI app built by `create_app`. Errors leave as RFC 9457 problem+json."""

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends, tenant_of
from rsa_service.api.workers import in_process_workers

__all__ = ["ApiSettings", "create_app", "in_process_workers", "named_backends", "tenant_of"]
