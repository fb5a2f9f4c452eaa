"""The web UI `rsa serve` serves: the job list at `/` and each job's live page at `/jobs/{id}`, from files shipped
in this package (hand-written JavaScript and CSS, no network, no build step). Pages are shells; their scripts read
the REST API with the same bearer keys as any client."""

from rsa_service.api.web.pages import install

__all__ = ["install"]
