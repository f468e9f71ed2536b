#!/bin/sh
# Generates the Python modules of the OtpEmail contract into ./gen with stock
# protoc and grpc_python_plugin. gen/ is gitignored: run this again after the
# .proto changes, never edit or commit what it writes.
#
#   otp/v1/otp_email_pb2.py, otp_email_pb2_grpc.py    the messages and the stub
#   google/rpc/status_pb2.py, error_details_pb2.py   the rich error details
#
# On Debian/Ubuntu (python3-* are the modules /usr/bin/python3 imports):
#   apt-get install protobuf-compiler protobuf-compiler-grpc libprotobuf-dev python3-grpcio python3-protobuf
#
# Where the .proto files come from (override with the variables):
#   PROTO_DIR       otp/v1/otp_email.proto: this repository's proto/
#   GOOGLEAPIS_DIR  google/rpc/{status,error_details}.proto, copies of github.com/googleapis/googleapis;
#                   default: the npm package google-proto-files (a dev dependency of this repository).
#                   Debian has no python3-googleapis-common-protos, hence generating them here.
#   WKT_DIR         google/protobuf/{timestamp,duration,any}.proto: libprotobuf-dev's /usr/include
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PROTO_DIR=${PROTO_DIR:-$repo/proto}
GOOGLEAPIS_DIR=${GOOGLEAPIS_DIR:-$repo/node_modules/google-proto-files}
WKT_DIR=${WKT_DIR:-/usr/include}

fail() { echo "generate.sh: $*" >&2; exit 1; }
command -v protoc >/dev/null || fail "protoc not found: apt-get install protobuf-compiler"
plugin=$(command -v grpc_python_plugin) || fail "grpc_python_plugin not found: apt-get install protobuf-compiler-grpc"
[ -f "$WKT_DIR/google/protobuf/timestamp.proto" ] ||
  fail "no google/protobuf/timestamp.proto under $WKT_DIR: apt-get install libprotobuf-dev (or set WKT_DIR)"
[ -f "$GOOGLEAPIS_DIR/google/rpc/status.proto" ] ||
  fail "no google/rpc/status.proto under $GOOGLEAPIS_DIR: run npm install, or set GOOGLEAPIS_DIR to a googleapis checkout"

rm -rf "$here/gen"
mkdir -p "$here/gen"
run_protoc() { protoc -I "$PROTO_DIR" -I "$GOOGLEAPIS_DIR" -I "$WKT_DIR" --python_out="$here/gen" "$@"; }
run_protoc --plugin=protoc-gen-grpc_python="$plugin" --grpc_python_out="$here/gen" otp/v1/otp_email.proto
run_protoc google/rpc/status.proto google/rpc/error_details.proto
echo "generated $(find "$here/gen" -name '*.py' | wc -l) modules into $here/gen"
