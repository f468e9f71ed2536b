package example.otpemail;

import io.grpc.CallCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import java.io.File;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.time.Duration;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLException;
import otp.v1.OtpEmail.GetDeliveryStatusRequest;
import otp.v1.OtpEmail.GetDeliveryStatusResponse;
import otp.v1.OtpEmail.SendOtpRequest;
import otp.v1.OtpEmail.SendOtpResponse;
import otp.v1.OtpEmail.VerifyOtpRequest;
import otp.v1.OtpEmail.VerifyOtpResponse;
import otp.v1.OtpEmailServiceGrpc;
import otp.v1.OtpEmailServiceGrpc.OtpEmailServiceBlockingStub;

/**
 * The three RPCs of OtpEmail, with the bearer token, a deadline and the caller's trace context on every call.
 *
 * <pre>{@code
 * try (OtpEmailClient client = OtpEmailClient.connect("otp.internal:50051", token, new File("ca.pem"))) {
 *   SendOtpResponse sent = client.sendOtp(SendOtpRequest.newBuilder()
 *       .setRecipient("ana@example.com").setPurpose(Purpose.PURPOSE_LOGIN)
 *       .setIdempotencyKey(signupId)        // the same key when retrying this send
 *       .build(), traceparent);
 * } catch (StatusRuntimeException error) {
 *   ErrorDetails details = ErrorDetails.of(error);   // reason, fieldViolations, retryDelay...
 * }
 * }</pre>
 *
 * <p>A failed call throws grpc-java's {@link io.grpc.StatusRuntimeException}; {@link ErrorDetails#of} reads the
 * google.rpc details the service sends with it. The client is thread-safe: share one per process, it keeps one
 * HTTP/2 connection.
 */
public final class OtpEmailClient implements AutoCloseable {
  /** SendOtp may wait for the relay up to the service's SEND_WAIT_BUDGET (3 s by default): allow more. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(10);

  private static final Metadata.Key<String> TRACEPARENT =
      Metadata.Key.of("traceparent", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final OtpEmailServiceBlockingStub stub;
  private final Duration timeout;

  /**
   * @param channel a channel to the service; closed by {@link #close}
   * @param token the bearer token, or null when the service asks for none
   * @param timeout each call's deadline
   */
  public OtpEmailClient(ManagedChannel channel, String token, Duration timeout) {
    this.channel = channel;
    OtpEmailServiceBlockingStub base = OtpEmailServiceGrpc.newBlockingStub(channel);
    this.stub = token == null || token.isEmpty() ? base : base.withCallCredentials(new BearerToken(token));
    this.timeout = timeout;
  }

  private static final Pattern DNS_TARGET = Pattern.compile("^dns:(?://[^/]*/)?(.*)$");
  private static final Pattern BRACKETED = Pattern.compile("^\\[([^\\]]+)\\](?::\\d*)?$");
  private static final Pattern IPV4 = Pattern.compile("^\\d{1,3}(\\.\\d{1,3}){3}$");
  private static final Pattern IPV6_START = Pattern.compile("[0-9A-Fa-f:]");

  /**
   * Connects over TLS when {@code caFile} (PEM of the CA that signed the server's certificate) is given; else
   * plaintext, and then a token only to a loopback target: {@link #connect(String, String, File, boolean)} with
   * {@code allowPlaintextToken} false.
   */
  public static OtpEmailClient connect(String target, String token, File caFile) throws SSLException {
    return connect(target, token, caFile, false);
  }

  /**
   * Connects over TLS when {@code caFile} (PEM of the CA that signed the server's certificate) is given; else
   * plaintext. Over plaintext a token is sent only to a loopback target (127.0.0.0/8, ::1, localhost: development,
   * a sidecar on this host); to any other target this throws {@link PlaintextTokenRefusedException} before opening
   * anything, unless {@code allowPlaintextToken} says that something else (a service mesh's sidecar) encrypts the
   * hop that leaves this host.
   */
  public static OtpEmailClient connect(String target, String token, File caFile, boolean allowPlaintextToken)
      throws SSLException {
    boolean hasToken = token != null && !token.isEmpty();
    if (caFile == null && hasToken && !allowPlaintextToken && !isLoopbackTarget(target)) {
      throw new PlaintextTokenRefusedException("refusing to send the token without TLS to " + target
          + ", which is not loopback: give caFile (the PEM of the service's CA) for TLS, or allowPlaintextToken "
          + "(CLI: --allow-plaintext-token) when a sidecar on this host does the TLS");
    }
    NettyChannelBuilder builder = NettyChannelBuilder.forTarget(target);
    if (caFile == null) {
      builder.usePlaintext();
    } else {
      // GrpcSslContexts sets up ALPN ("h2"), which gRPC over TLS requires: with OpenSSL (netty-tcnative)
      // when Netty finds it, else with the JDK's TLS, which Debian's Netty cannot do.
      try {
        builder.sslContext(GrpcSslContexts.forClient().trustManager(caFile).build());
      } catch (UnsupportedOperationException noAlpn) {
        throw new IllegalStateException("this Netty cannot negotiate ALPN over the JDK's TLS: put netty-tcnative "
            + "and its native library on the class path (examples/java/generate.sh does, from Debian's "
            + "libnetty-tcnative-java and libnetty-tcnative-jni)", noAlpn);
      }
    }
    return new OtpEmailClient(builder.build(), token, DEFAULT_TIMEOUT);
  }

  /**
   * Whether a gRPC target ({@code host:port}, {@code [v6]:port}, {@code dns:///host:port}) names this host's
   * loopback: 127.0.0.0/8, ::1 or localhost. Judged from the name alone, never looked up; other schemes read as not
   * loopback.
   */
  public static boolean isLoopbackTarget(String target) {
    Matcher dns = DNS_TARGET.matcher(target);
    String endpoint = dns.matches() ? dns.group(1) : target;
    if (!dns.matches() && endpoint.contains("://")) return false;
    Matcher bracketed = BRACKETED.matcher(endpoint);
    String host;
    if (bracketed.matches()) {
      host = bracketed.group(1);
    } else if (endpoint.chars().filter(c -> c == ':').count() == 1) {
      host = endpoint.substring(0, endpoint.indexOf(':'));
    } else {
      host = endpoint; // a bare name, or an IPv6 address without a port
    }
    String name = host.toLowerCase(Locale.ROOT);
    if (name.equals("localhost") || name.equals("localhost.")) return true;
    // Only what InetAddress reads as a literal reaches it: a valid dotted quad, or a string that starts with a hex
    // digit or ':' and holds a ':' (parsed as IPv6 or refused, never looked up). Anything else, such as
    // "ipv4:127.0.0.1:1" or "300.0.0.1", would go to the resolver (/etc/hosts, DNS), so it is not loopback.
    if (!isDottedQuad(host) && !(host.contains(":") && IPV6_START.matcher(host).lookingAt())) return false;
    try {
      return InetAddress.getByName(host).isLoopbackAddress();
    } catch (UnknownHostException notAnAddress) {
      return false;
    }
  }

  private static boolean isDottedQuad(String host) {
    if (!IPV4.matcher(host).matches()) return false;
    for (String octet : host.split("\\.")) {
      if (Integer.parseInt(octet) > 255) return false;
    }
    return true;
  }

  /** A token would have gone in the clear to a target that is not loopback; nothing was sent. */
  public static final class PlaintextTokenRefusedException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    PlaintextTokenRefusedException(String message) {
      super(message);
    }
  }

  /**
   * Emails a code the service generates. Give one idempotency key per user action and reuse it when retrying
   * (UNAVAILABLE, a deadline): the retry then answers the first call's message_id.
   *
   * @param traceparent the W3C header of the caller's span ({@code 00-<trace id>-<span id>-<flags>}), or null
   */
  public SendOtpResponse sendOtp(SendOtpRequest request, String traceparent) {
    return call(traceparent).sendOtp(request);
  }

  /** The delivery record: state, the relay's reply, each attempt, bounces, the trace id. */
  public GetDeliveryStatusResponse getDeliveryStatus(GetDeliveryStatusRequest request, String traceparent) {
    return call(traceparent).getDeliveryStatus(request);
  }

  /** Checks the code a user typed: VERIFIED, INVALID (with attempts left), EXPIRED, LOCKED or NOT_FOUND. */
  public VerifyOtpResponse verifyOtp(VerifyOtpRequest request, String traceparent) {
    return call(traceparent).verifyOtp(request);
  }

  /** A stub for one call: the deadline starts now, and the caller's traceparent goes along as metadata. */
  private OtpEmailServiceBlockingStub call(String traceparent) {
    OtpEmailServiceBlockingStub withDeadline = stub.withDeadlineAfter(timeout.toMillis(), TimeUnit.MILLISECONDS);
    if (traceparent == null || traceparent.isEmpty()) return withDeadline;
    // The service's span and its delivery record take this trace id. With OpenTelemetry,
    // GlobalOpenTelemetry.getPropagators().getTextMapPropagator().inject(...) fills the same header.
    Metadata headers = new Metadata();
    headers.put(TRACEPARENT, traceparent);
    return withDeadline.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdown();
    if (!channel.awaitTermination(5, TimeUnit.SECONDS)) channel.shutdownNow();
  }

  /** {@code authorization: Bearer <token>} on every call of the stub it is attached to. */
  private static final class BearerToken extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    private final String token;

    BearerToken(String token) {
      this.token = token;
    }

    @Override
    public void applyRequestMetadata(RequestInfo requestInfo, Executor executor, MetadataApplier applier) {
      try {
        Metadata headers = new Metadata();
        headers.put(AUTHORIZATION, "Bearer " + token);
        applier.apply(headers);
      } catch (RuntimeException error) {
        // Never the token itself in the status: only that it could not be attached.
        applier.fail(Status.UNAUTHENTICATED.withDescription("could not attach the bearer token").withCause(error));
      }
    }

    @Override
    public void thisUsesUnstableApi() {}
  }
}
