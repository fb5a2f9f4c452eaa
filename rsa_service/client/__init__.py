"""The Python SDK of rsa-service, shaped like openai-python: `RSAClient` and `AsyncRSAClient` with `.jobs`.

from rsa_service.client import RSAClient

with RSAClient(base_url="http://127.0.0.1:8000") as client:   # or RSA_BASE_URL / RSA_API_KEY
    job = client.jobs.create("What is 2+2?", population=8, rounds=2)
    for event in client.jobs.events(job.id):
        print(event.type, event.data)
    print(client.jobs.wait(job.id).result.answer)
"""

from rsa_service.client._async import AsyncJobs, AsyncRSAClient
from rsa_service.client._base import NOT_GIVEN, NotGiven
from rsa_service.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    RSAError,
    UnprocessableEntityError,
    WaitTimeout,
)
from rsa_service.client._sync import Jobs, RSAClient
from rsa_service.wire import (
    Event,
    FieldError,
    Job,
    JobCreate,
    JobPage,
    JobParams,
    JobResult,
    JobStatus,
    Problem,
    ProblemDetails,
    Progress,
    StepList,
    StepRecord,
)

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncJobs",
    "AsyncRSAClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Event",
    "FieldError",
    "InternalServerError",
    "Job",
    "JobCreate",
    "JobPage",
    "JobParams",
    "JobResult",
    "JobStatus",
    "Jobs",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "Problem",
    "ProblemDetails",
    "Progress",
    "RSAClient",
    "RSAError",
    "RateLimitError",
    "RequestTooLargeError",
    "StepList",
    "StepRecord",
    "UnprocessableEntityError",
    "WaitTimeout",
]
