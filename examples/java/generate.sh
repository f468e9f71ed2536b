#!/bin/sh
# Generates the Java classes of the OtpEmail contract with stock protoc and
# grpc_java_plugin, and compiles them with the client in ./src against Debian's
# jars, into ./build (gitignored: run this again after the .proto changes,
# never edit or commit what it writes). No Maven or Gradle: Maven Central is
# not needed, only the jars apt installs under /usr/share/java.
#
#   build/generated/otp/v1/OtpEmail.java, OtpEmailServiceGrpc.java   the messages and the stub (package otp.v1)
#   build/generated/com/google/rpc/*.java                             the rich error details
#   build/classes/                                                    all of it compiled, with ./src
#   build/native/META-INF/native/libnetty_tcnative.so                 a link to Debian's tcnative (below)
#   build/classpath                                                   build/classes, build/native and the jars,
#                                                                     for java -cp
#
# TLS: gRPC needs ALPN ("h2"), and Debian's Netty has no ALPN over the JDK's TLS (its JdkSslContext
# refuses: "JDK provider does not support ALPN protocol"). Netty's OpenSSL engine (netty-tcnative) does
# ALPN, but Netty looks for libnetty_tcnative.so where Debian installs libnetty-tcnative.so: Netty also
# loads it as the class path resource META-INF/native/libnetty_tcnative.so, which build/native provides.
#
# On Debian/Ubuntu:
#   apt-get install default-jdk-headless protobuf-compiler protobuf-compiler-grpc-java-plugin libprotobuf-dev \
#     libprotobuf-java libgrpc-java libnetty-java libperfmark-java libgoogle-gson-java libguava-java \
#     libgeronimo-annotation-1.3-spec-java libnetty-tcnative-java libnetty-tcnative-jni
#
# Where things come from (override with the variables):
#   PROTO_DIR       otp/v1/otp_email.proto: this repository's proto/
#   GOOGLEAPIS_DIR  google/rpc/{status,error_details}.proto, copies of github.com/googleapis/googleapis;
#                   default: the npm package google-proto-files (a dev dependency of this repository).
#                   Debian's libgoogle-common-protos-java (1.16) predates QuotaFailure's quota_id,
#                   quota_value and future_quota_value, hence generating them here.
#   WKT_DIR         google/protobuf/{timestamp,duration,any}.proto: libprotobuf-dev's /usr/include
#   JARS_DIR        the jars: /usr/share/java
#   TCNATIVE_SO     libnetty-tcnative-jni's library: /usr/lib/<multiarch>/jni/libnetty-tcnative.so
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PROTO_DIR=${PROTO_DIR:-$repo/proto}
GOOGLEAPIS_DIR=${GOOGLEAPIS_DIR:-$repo/node_modules/google-proto-files}
WKT_DIR=${WKT_DIR:-/usr/include}
JARS_DIR=${JARS_DIR:-/usr/share/java}
if [ -z "${TCNATIVE_SO:-}" ]; then
  for so in /usr/lib/*/jni/libnetty-tcnative.so; do TCNATIVE_SO=$so; done
fi

fail() { echo "generate.sh: $*" >&2; exit 1; }

# Every missing Debian package at once, so one apt-get line fixes them all.
missing=""
need() { missing="$missing${missing:+ }$1"; }
command -v protoc >/dev/null || need protobuf-compiler
command -v grpc_java_plugin >/dev/null || need protobuf-compiler-grpc-java-plugin
command -v javac >/dev/null || need default-jdk-headless
[ -f "$WKT_DIR/google/protobuf/timestamp.proto" ] || need libprotobuf-dev
[ -f "${TCNATIVE_SO:-}" ] || need libnetty-tcnative-jni
# What runs the client: grpc-java over Netty with OpenSSL, protobuf-java (JsonFormat is protobuf-util, which
# needs guava and gson). Debian's libgrpc-java does not depend on Netty, perfmark or gson: they are listed here.
runtime_jars="grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub
  protobuf protobuf-util guava gson perfmark-api
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common netty-handler
  netty-handler-proxy netty-resolver netty-transport netty-tcnative"
# Compile time only: the stub carries @javax.annotation.Generated, which the JDK dropped in Java 11.
compile_jars="geronimo-annotation-1.3-spec"
package_of() {
  case $1 in
    grpc-*) echo libgrpc-java ;;
    netty-tcnative) echo libnetty-tcnative-java ;;
    protobuf*) echo libprotobuf-java ;;
    netty-*) echo libnetty-java ;;
    perfmark-*) echo libperfmark-java ;;
    gson) echo libgoogle-gson-java ;;
    guava) echo libguava-java ;;
    geronimo-annotation-*) echo libgeronimo-annotation-1.3-spec-java ;;
  esac
}
classpath=""
for jar in $runtime_jars; do
  if [ -f "$JARS_DIR/$jar.jar" ]; then
    classpath="$classpath:$JARS_DIR/$jar.jar"
  else
    pkg=$(package_of "$jar")
    case " $missing " in *" $pkg "*) ;; *) need "$pkg" ;; esac
  fi
done
for jar in $compile_jars; do
  [ -f "$JARS_DIR/$jar.jar" ] || need "$(package_of "$jar")"
done
[ -z "$missing" ] ||
  fail "missing Debian packages (or set WKT_DIR / JARS_DIR / TCNATIVE_SO): apt-get install --no-install-recommends $missing"
[ -f "$GOOGLEAPIS_DIR/google/rpc/status.proto" ] ||
  fail "no google/rpc/status.proto under $GOOGLEAPIS_DIR: run npm install, or set GOOGLEAPIS_DIR to a googleapis checkout"

build="$here/build"
rm -rf "$build"
mkdir -p "$build/generated" "$build/classes"
run_protoc() { protoc -I "$PROTO_DIR" -I "$GOOGLEAPIS_DIR" -I "$WKT_DIR" --java_out="$build/generated" "$@"; }
run_protoc --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" --grpc-java_out="$build/generated" \
  otp/v1/otp_email.proto
run_protoc google/rpc/status.proto google/rpc/error_details.proto

# -nowarn: the generated code's deprecation and unchecked notes are not ours to fix.
find "$build/generated" "$here/src" -name '*.java' >"$build/sources"
javac -nowarn -encoding UTF-8 -d "$build/classes" \
  -cp "${classpath#:}:$JARS_DIR/geronimo-annotation-1.3-spec.jar" "@$build/sources"
mkdir -p "$build/native/META-INF/native"
ln -s "$TCNATIVE_SO" "$build/native/META-INF/native/libnetty_tcnative.so"
echo "$build/classes:$build/native$classpath" >"$build/classpath"
echo "compiled $(find "$build/classes" -name '*.class' | wc -l) classes into $build/classes; classpath in $build/classpath"
