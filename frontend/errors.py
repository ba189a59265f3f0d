"""Failures the frontend answers with a gRPC status and a message."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """End the RPC with ``code`` and ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def invalid(details: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, details)
