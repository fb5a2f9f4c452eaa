"""The SDK's exceptions, one tree; HTTP statuses and httpx2 errors are mapped to it in `_base`.

RSAError
├── APIConnectionError            no usable answer: refused, reset, or dropped connection
│   └── APITimeoutError           a timeout phase (connect, read, write, pool) ran out
├── APIStatusError                the server answered with an error status; `.problem` has the details
│   ├── BadRequestError           400
│   ├── AuthenticationError       401
│   ├── PermissionDeniedError     403
│   ├── NotFoundError             404 (also another tenant's job)
│   ├── ConflictError             409
│   ├── RequestTooLargeError      413
│   ├── UnprocessableEntityError  422 (`.problem.errors` lists the fields)
│   ├── RateLimitError            429
│   └── InternalServerError       5xx
└── WaitTimeout                   `jobs.wait` gave up before the job finished
"""

from __future__ import annotations

import httpx2

from rsa_service.wire import ProblemDetails


class RSAError(Exception):
    """Base of every SDK error."""


class APIConnectionError(RSAError):
    def __init__(self, message: str, *, request: httpx2.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    pass


class APIStatusError(RSAError):
    def __init__(self, response: httpx2.Response, problem: ProblemDetails) -> None:
        super().__init__(f"{response.status_code} {problem.title}: {problem.detail or ''}".rstrip(": "))
        self.response = response
        self.status_code = response.status_code
        self.problem = problem


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RequestTooLargeError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class WaitTimeout(RSAError):
    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout_s:g}s")
        self.job_id = job_id


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(response: httpx2.Response) -> APIStatusError:
    """The exception for an error response, with its problem details (or a stand-in for a non-RFC 9457 body)."""
    try:
        problem = ProblemDetails.model_validate_json(response.content)
    except ValueError:
        problem = ProblemDetails(title=response.reason_phrase, status=response.status_code, detail=response.text[:200])
    kind = STATUS_ERRORS.get(response.status_code)
    if kind is None:
        kind = InternalServerError if response.status_code >= 500 else APIStatusError
    return kind(response, problem)
