"""Opens the gRPC channel of a `Client`: plaintext or TLS, and the metadata
every call carries (a bearer token, a namespace, the current trace context).

The metadata is added by one client interceptor rather than by call
credentials, because gRPC sends call credentials over TLS only, while a token
must also reach a vowd behind a TLS-terminating sidecar on localhost.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from vow import _tracing

# Larger than gRPC's 4 MiB default: an output may be as large as the server allows.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def split_target(target: str) -> tuple[str, bool | None]:
    """`host:port`, `http://host:port` (plaintext) or `https://host:port` (TLS) -> (host:port, tls or None)."""
    if target.startswith("https://"):
        return target[len("https://") :].rstrip("/"), True
    if target.startswith("http://"):
        return target[len("http://") :].rstrip("/"), False
    return target, None


def open_channel(
    target: str,
    *,
    tls: bool | None,
    root_certificates: bytes | str | Path | None,
    certificate_chain: bytes | str | Path | None,
    private_key: bytes | str | Path | None,
    credentials: grpc.ChannelCredentials | None,
    server_name: str | None,
    options: Sequence[tuple[str, Any]],
    aio: bool = False,
) -> Any:
    """A channel to `target` (a grpc.aio one with `aio`); TLS when asked for, or when any TLS material is given."""
    address, scheme_tls = split_target(target)
    use_tls = bool(tls or scheme_tls or credentials or root_certificates or certificate_chain or private_key)
    if tls is False and scheme_tls:
        raise ValueError(f"tls=False contradicts the https:// target {target!r}")
    channel_options = [*DEFAULT_OPTIONS, *options]
    if server_name:
        channel_options.append(("grpc.ssl_target_name_override", server_name))
    grpc_module: Any = grpc.aio if aio else grpc
    if not use_tls:
        return grpc_module.insecure_channel(address, options=channel_options)
    if credentials is None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(root_certificates),
            private_key=_pem(private_key),
            certificate_chain=_pem(certificate_chain),
        )
    return grpc_module.secure_channel(address, credentials, options=channel_options)


def _pem(source: bytes | str | Path | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails is abstract; an interceptor passes on its own copy."""


class MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the bearer token) and, if enabled, the current trace context to each call."""

    def __init__(self, fixed: Sequence[tuple[str, str]], propagate_trace: bool):
        self._fixed = tuple(fixed)
        self._propagate_trace = propagate_trace and _tracing.available()

    def _with_metadata(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        metadata.extend(self._fixed)
        if self._propagate_trace:
            metadata.extend(_tracing.current_context_metadata())
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_metadata(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_metadata(details), request)


# An administrator's key names the namespace of each call with this header.
NAMESPACE_HEADER = "x-vow-namespace"


def identity_metadata(token: str | None, namespace: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that says who calls: a bearer token, a namespace; empty without either."""
    if token and (token != token.strip() or "\n" in token):
        raise ValueError("a token is one line without surrounding spaces")
    metadata = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if namespace:
        metadata.append((NAMESPACE_HEADER, namespace))
    return tuple(metadata)


def intercepted(channel: grpc.Channel, fixed: Sequence[tuple[str, str]], propagate_trace: bool) -> grpc.Channel:
    """The channel with the metadata interceptor, or the channel itself when it has nothing to add."""
    if not fixed and not (propagate_trace and _tracing.available()):
        return channel
    return grpc.intercept_channel(channel, MetadataInterceptor(fixed, propagate_trace))
