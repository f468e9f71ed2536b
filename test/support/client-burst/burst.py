#!/usr/bin/env python3
"""A burst of SendOtp calls through examples/python's client: one channel, a thread per call, all started at once.

    OTP_EMAIL_TOKEN=... /usr/bin/python3 burst.py --target HOST:PORT --ca-file ca.pem RECIPIENT...

Prints {"outcomes": [...]}, one a recipient in order: the state SendOtp answered, or "CODE: details" of its error.
A test's program, not a sample: test/support/client-contract.ts runs it.
"""
import argparse
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "python"))

import grpc  # noqa: E402
from otp_client import OtpEmailClient, otp_email_pb2  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("recipients", nargs="+")
    args = parser.parse_args()
    # Every call waits here until all threads are up, so that they reach the channel together.
    start = threading.Barrier(len(args.recipients))

    with OtpEmailClient.connect(args.target, token=os.environ.get("OTP_EMAIL_TOKEN"), ca_file=args.ca_file) as client:
        def send(recipient: str) -> str:
            start.wait()
            try:
                sent = client.send_otp(recipient, otp_email_pb2.PURPOSE_LOGIN)
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()}"
            return otp_email_pb2.DeliveryState.Name(sent.state)

        with ThreadPoolExecutor(max_workers=len(args.recipients)) as pool:
            outcomes = list(pool.map(send, args.recipients))
    print(json.dumps({"outcomes": outcomes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
