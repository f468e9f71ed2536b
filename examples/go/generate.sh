#!/bin/sh
# Generates the Go packages of the OtpEmail contract into ./gen with stock
# protoc, protoc-gen-go and protoc-gen-go-grpc. gen/ is gitignored: run this
# again after the .proto changes, never edit or commit what it writes.
#
#   gen/src/$GO_PREFIX/otpv1        otp/v1/otp_email.proto: the messages and the stub
#   gen/src/$GO_PREFIX/errdetails   google/rpc/error_details.proto: the rich error details
#
# On Debian/Ubuntu (golang-github-golang-protobuf-1-5-dev, not the -1-3- that apt picks
# for golang-google-grpc-dev by default: 1.3's codec cannot decode protoc-gen-go 1.20+ messages):
#   apt-get install golang-go protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc \
#     golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
#
# The contract has no go_package option (this repository has no Go import path to
# offer), so the import paths are given here with protoc-gen-go's M flags, as
# for any third party's .proto. GOPATH layout: build with
#   GO111MODULE=off GOPATH=<this dir>:<this dir>/gen:/usr/share/gocode go build ...
#
# Variables:
#   GO_PREFIX       the import path the generated packages live under; default example.com/otpemail
#   PROTO_DIR       otp/v1/otp_email.proto: this repository's proto/
#   GOOGLEAPIS_DIR  google/rpc/error_details.proto, a copy of github.com/googleapis/googleapis;
#                   default: the npm package google-proto-files (a dev dependency of this repository).
#                   Debian's golang-google-genproto-dev has errdetails, but a 2020 snapshot without
#                   QuotaFailure's quota_id, quota_value and future_quota_value, hence generating it here.
#   WKT_DIR         google/protobuf/{timestamp,duration}.proto: libprotobuf-dev's /usr/include
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GO_PREFIX=${GO_PREFIX:-example.com/otpemail}
PROTO_DIR=${PROTO_DIR:-$repo/proto}
GOOGLEAPIS_DIR=${GOOGLEAPIS_DIR:-$repo/node_modules/google-proto-files}
WKT_DIR=${WKT_DIR:-/usr/include}

fail() { echo "generate.sh: $*" >&2; exit 1; }
command -v protoc >/dev/null || fail "protoc not found: apt-get install protobuf-compiler"
command -v protoc-gen-go >/dev/null || fail "protoc-gen-go not found: apt-get install protoc-gen-go"
command -v protoc-gen-go-grpc >/dev/null || fail "protoc-gen-go-grpc not found: apt-get install protoc-gen-go-grpc"
[ -f "$PROTO_DIR/otp/v1/otp_email.proto" ] ||
  fail "no otp/v1/otp_email.proto under $PROTO_DIR: set PROTO_DIR to the proto/ folder of OtpEmail's repository"
[ -f "$WKT_DIR/google/protobuf/timestamp.proto" ] ||
  fail "no google/protobuf/timestamp.proto under $WKT_DIR: apt-get install libprotobuf-dev (or set WKT_DIR)"
[ -f "$GOOGLEAPIS_DIR/google/rpc/error_details.proto" ] ||
  fail "no google/rpc/error_details.proto under $GOOGLEAPIS_DIR: run npm install, or set GOOGLEAPIS_DIR to a googleapis checkout"

# Which Go package each .proto becomes: "<import path>;<package name>".
otp="Motp/v1/otp_email.proto=$GO_PREFIX/otpv1;otpv1"
details="Mgoogle/rpc/error_details.proto=$GO_PREFIX/errdetails;errdetails"

rm -rf "$here/gen"
mkdir -p "$here/gen/src"
run_protoc() { protoc -I "$PROTO_DIR" -I "$GOOGLEAPIS_DIR" -I "$WKT_DIR" --go_out="$here/gen/src" "$@"; }
run_protoc --go_opt="$otp" --go-grpc_out="$here/gen/src" --go-grpc_opt="$otp" otp/v1/otp_email.proto
run_protoc --go_opt="$details" google/rpc/error_details.proto
echo "generated $(find "$here/gen" -name '*.go' | wc -l) files into $here/gen/src/$GO_PREFIX"
