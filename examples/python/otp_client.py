#!/usr/bin/env python3
"""Calling OtpEmail from Python with the stubs protoc generates (./generate.sh, into ./gen).

As a module:

    from otp_client import OtpEmailClient, ErrorDetails, otp_email_pb2

    with OtpEmailClient.connect("otp.internal:50051", token=token, ca_file="ca.pem") as client:
        try:
            sent = client.send_otp("ana@example.com", otp_email_pb2.PURPOSE_LOGIN,
                                   idempotency_key=signup_id, traceparent=traceparent)
        except grpc.RpcError as error:
            details = ErrorDetails.of(error)   # .reason, .field_violations, .retry_delay...
            raise
        status = client.get_delivery_status(sent.message_id)
        verified = client.verify_otp("ana@example.com", otp_email_pb2.PURPOSE_LOGIN, typed_code)

Without ca_file the channel is plaintext, and a token goes that way only to a loopback target (127.0.0.0/8, ::1,
localhost); allow_plaintext_token=True (--allow-plaintext-token) is the opt-out for a sidecar that does the TLS.

As a command (JSON on stdout; a gRPC error as JSON on stderr, exit 1):

    export OTP_EMAIL_TOKEN=...   # the bearer token: never on the command line
    python3 otp_client.py --target otp.internal:50051 --ca-file ca.pem \\
        send --recipient ana@example.com --purpose login --idempotency-key "$(uuidgen)"
    python3 otp_client.py --target otp.internal:50051 --ca-file ca.pem status 01kb2m7q3c5xw9p8h2g4r6t0vn
    echo 482913 | python3 otp_client.py --target otp.internal:50051 --ca-file ca.pem \\
        verify --recipient ana@example.com --purpose login

Needs /usr/bin/python3 with Debian's python3-grpcio and python3-protobuf (or pip's grpcio and protobuf).
"""
import argparse
import ipaddress
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Optional

# The generated modules import each other as top-level packages (otp.v1, google.rpc).
sys.path.insert(0, str(Path(__file__).resolve().with_name("gen")))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from otp.v1 import otp_email_pb2, otp_email_pb2_grpc  # noqa: E402

# SendOtp may wait for the relay up to the service's SEND_WAIT_BUDGET (3 s by default): allow more.
DEFAULT_TIMEOUT = timedelta(seconds=10)


class OtpEmailClient:
    """The three RPCs, with the bearer token and the caller's trace context on every call."""

    def __init__(self, channel: grpc.Channel, *, token: Optional[str] = None, timeout: timedelta = DEFAULT_TIMEOUT):
        self._channel = channel
        self._stub = otp_email_pb2_grpc.OtpEmailServiceStub(channel)
        self._token = token
        self._timeout = timeout.total_seconds()

    @classmethod
    def connect(cls, target: str, *, token: Optional[str] = None, ca_file: Optional[str] = None,
                allow_plaintext_token: bool = False, timeout: timedelta = DEFAULT_TIMEOUT) -> "OtpEmailClient":
        """TLS when ca_file (PEM of the CA that signed the server's certificate) is given; else plaintext.

        Over plaintext a token is sent only to a loopback target (127.0.0.0/8, ::1, localhost: development,
        a sidecar on this host); to any other target connect raises PlaintextTokenRefused before opening
        anything, unless allow_plaintext_token=True says that something else (a service mesh's sidecar)
        encrypts the hop that leaves this host."""
        if ca_file is None:
            if token and not allow_plaintext_token and not is_loopback_target(target):
                raise PlaintextTokenRefused(
                    f"refusing to send the token without TLS to {target}, which is not loopback: give ca_file "
                    "(the PEM of the service's CA) for TLS, or allow_plaintext_token=True (CLI: "
                    "--allow-plaintext-token) when a sidecar on this host does the TLS")
            channel = grpc.insecure_channel(target)
        else:
            with open(ca_file, "rb") as pem:
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem.read()))
        return cls(channel, token=token, timeout=timeout)

    def __enter__(self) -> "OtpEmailClient":
        return self

    def __exit__(self, *_exc) -> None:
        self._channel.close()

    def _metadata(self, traceparent: Optional[str]) -> list:
        metadata = []
        if self._token:
            metadata.append(("authorization", f"Bearer {self._token}"))
        # The W3C header of the caller's span (00-<trace id>-<span id>-<flags>): the service's span and
        # its delivery record take that trace id. With OpenTelemetry, opentelemetry.propagate.inject(carrier)
        # fills carrier["traceparent"].
        if traceparent:
            metadata.append(("traceparent", traceparent))
        return metadata

    def send_otp(self, recipient: str, purpose: int, *, locale: str = "", ttl: Optional[timedelta] = None,
                 idempotency_key: str = "", end_user_ip: str = "",
                 traceparent: Optional[str] = None) -> otp_email_pb2.SendOtpResponse:
        """Emails a code the service generates. Give one idempotency_key per user action and reuse it
        when retrying (UNAVAILABLE, a deadline): the retry then answers the first call's message_id."""
        request = otp_email_pb2.SendOtpRequest(recipient=recipient, purpose=purpose, locale=locale,
                                               idempotency_key=idempotency_key, end_user_ip=end_user_ip)
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        return self._stub.SendOtp(request, timeout=self._timeout, metadata=self._metadata(traceparent))

    def get_delivery_status(self, message_id: str, *,
                            traceparent: Optional[str] = None) -> otp_email_pb2.GetDeliveryStatusResponse:
        request = otp_email_pb2.GetDeliveryStatusRequest(message_id=message_id)
        return self._stub.GetDeliveryStatus(request, timeout=self._timeout, metadata=self._metadata(traceparent))

    def verify_otp(self, recipient: str, purpose: int, code: str, *,
                   traceparent: Optional[str] = None) -> otp_email_pb2.VerifyOtpResponse:
        request = otp_email_pb2.VerifyOtpRequest(recipient=recipient, purpose=purpose, code=code)
        return self._stub.VerifyOtp(request, timeout=self._timeout, metadata=self._metadata(traceparent))


class PlaintextTokenRefused(ValueError):
    """A token would have gone in the clear to a target that is not loopback; nothing was sent."""


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target (host:port, [v6]:port, dns:///host:port) names this host's loopback: 127.0.0.0/8,
    ::1 or localhost. Judged from the name alone, before any lookup; other schemes (ipv4:, unix:) read as not
    loopback."""
    dns = re.match(r"^dns:(?://[^/]*/)?(.*)$", target)
    endpoint = dns.group(1) if dns else target
    if dns is None and "://" in endpoint:
        return False
    bracketed = re.match(r"^\[([^\]]+)\](?::\d*)?$", endpoint)
    if bracketed:
        host = bracketed.group(1)
    elif endpoint.count(":") == 1:
        host = endpoint.split(":")[0]
    else:
        host = endpoint  # a bare name, or an IPv6 address without a port
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # Python before 3.13 does not count ::ffff:127.0.0.1 as loopback; Go, Java and Node do.
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass
class ErrorDetails:
    """A failed call, with the google.rpc details the service sends in grpc-status-details-bin."""

    code: str  # grpc.StatusCode name: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED...
    message: str
    reason: str = ""  # ErrorInfo: RESEND_COOLDOWN, TOKEN_INVALID, RECIPIENT_SUPPRESSED...
    domain: str = ""
    metadata: dict = field(default_factory=dict)  # ErrorInfo: message_id, limit, retry_at...
    field_violations: list = field(default_factory=list)  # BadRequest: [{field, description, reason}]
    retry_delay: Optional[timedelta] = None  # RetryInfo: do not retry sooner
    quota_violations: list = field(default_factory=list)  # QuotaFailure: the limits that refused

    @classmethod
    def of(cls, error: grpc.RpcError) -> "ErrorDetails":
        details = cls(code=error.code().name, message=error.details() or "")
        status = status_pb2.Status()
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status.ParseFromString(value)
        for any_detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            quota = error_details_pb2.QuotaFailure()
            if any_detail.Unpack(info):
                details.reason, details.domain, details.metadata = info.reason, info.domain, dict(info.metadata)
            elif any_detail.Unpack(bad_request):
                details.field_violations = [
                    {"field": v.field, "description": v.description, "reason": v.reason}
                    for v in bad_request.field_violations
                ]
            elif any_detail.Unpack(retry):
                details.retry_delay = retry.retry_delay.ToTimedelta()
            elif any_detail.Unpack(quota):
                details.quota_violations = [
                    {"subject": v.subject, "description": v.description, "quota_id": v.quota_id,
                     "quota_value": v.quota_value,
                     # A proto3 `optional` field: HasField tells "unset" from 0.
                     "future_quota_value": v.future_quota_value if v.HasField("future_quota_value") else None}
                    for v in quota.violations
                ]
        return details

    def to_json(self) -> dict:
        out = asdict(self)
        del out["retry_delay"]
        out["retry_delay_seconds"] = None if self.retry_delay is None else self.retry_delay.total_seconds()
        return out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Call OtpEmail (token from OTP_EMAIL_TOKEN).")
    parser.add_argument("--target", default=os.environ.get("OTP_EMAIL_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--ca-file", default=os.environ.get("OTP_EMAIL_CA_FILE"),
                        help="PEM CA of the server's certificate; without it the call is plaintext, and a token is "
                             "sent that way only to a loopback target")
    parser.add_argument("--allow-plaintext-token", action="store_true",
                        help="send the token over plaintext to a target that is not loopback (a service mesh whose "
                             "sidecar does the TLS)")
    traced = argparse.ArgumentParser(add_help=False)
    traced.add_argument("--traceparent", default=os.environ.get("TRACEPARENT"),
                        help="W3C traceparent of the caller's span")
    commands = parser.add_subparsers(dest="command", required=True)
    purposes = ["login", "signup", "password_reset"]
    send = commands.add_parser("send", parents=[traced], help="SendOtp")
    send.add_argument("--recipient", required=True)
    send.add_argument("--purpose", required=True, choices=purposes)
    send.add_argument("--locale", default="")
    send.add_argument("--ttl", type=int, help="seconds the code stays valid")
    send.add_argument("--idempotency-key", default="")
    send.add_argument("--end-user-ip", default="")
    status = commands.add_parser("status", parents=[traced], help="GetDeliveryStatus")
    status.add_argument("message_id")
    verify = commands.add_parser("verify", parents=[traced], help="VerifyOtp; the code is read from standard input")
    verify.add_argument("--recipient", required=True)
    verify.add_argument("--purpose", required=True, choices=purposes)
    args = parser.parse_args(argv)

    purpose = otp_email_pb2.Purpose.Value(f"PURPOSE_{args.purpose.upper()}") if "purpose" in args else None
    try:
        client = OtpEmailClient.connect(args.target, token=os.environ.get("OTP_EMAIL_TOKEN"), ca_file=args.ca_file,
                                        allow_plaintext_token=args.allow_plaintext_token)
    except PlaintextTokenRefused as refused:
        # A local refusal reads as UNKNOWN, so that stderr's last line is JSON like any failed call's.
        print(json.dumps(ErrorDetails(code="UNKNOWN", message=str(refused)).to_json()), file=sys.stderr)
        return 1
    with client:
        try:
            if args.command == "send":
                ttl = None if args.ttl is None else timedelta(seconds=args.ttl)
                response = client.send_otp(args.recipient, purpose, locale=args.locale, ttl=ttl,
                                           idempotency_key=args.idempotency_key, end_user_ip=args.end_user_ip,
                                           traceparent=args.traceparent)
            elif args.command == "status":
                response = client.get_delivery_status(args.message_id, traceparent=args.traceparent)
            else:
                code = sys.stdin.readline().strip()
                response = client.verify_otp(args.recipient, purpose, code, traceparent=args.traceparent)
        except grpc.RpcError as error:
            print(json.dumps(ErrorDetails.of(error).to_json()), file=sys.stderr)
            return 1
    # Enums as their names, Timestamps as RFC 3339, Durations as "1.5s", int64 as strings.
    print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
