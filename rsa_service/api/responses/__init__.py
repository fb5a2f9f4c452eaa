"""OpenAI's Responses API over the durable jobs: a response is a job seen through OpenAI's resource."""

from rsa_service.api.responses.routes import router

__all__ = ["router"]
