package example.otpemail;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * A failed call, with the google.rpc details the service sends in {@code grpc-status-details-bin}.
 *
 * @param code the gRPC status code: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED...
 * @param message the status message: short, says what to do, never a code or a secret
 * @param reason ErrorInfo: RESEND_COOLDOWN, TOKEN_INVALID, RECIPIENT_SUPPRESSED... ("" without one)
 * @param domain ErrorInfo: "otp-email"
 * @param metadata ErrorInfo: message_id, limit, retry_at...
 * @param fieldViolations BadRequest: the request fields that were refused, and why
 * @param retryDelay RetryInfo: do not retry sooner; null when the service gave none
 * @param quotaViolations QuotaFailure: the limits that refused
 */
public record ErrorDetails(
    Status.Code code,
    String message,
    String reason,
    String domain,
    Map<String, String> metadata,
    List<FieldViolation> fieldViolations,
    Duration retryDelay,
    List<QuotaViolation> quotaViolations) {

  /** BadRequest.FieldViolation: {@code field} is the request field's name, e.g. "recipient". */
  public record FieldViolation(String field, String description, String reason) {}

  /**
   * QuotaFailure.Violation. {@code futureQuotaValue} is a proto3 {@code optional} field: null when unset, which
   * tells "unset" from 0.
   */
  public record QuotaViolation(
      String subject, String description, String quotaId, long quotaValue, Long futureQuotaValue) {}

  /** Reads a failed call; anything that carries no gRPC status reads as UNKNOWN with its message. */
  public static ErrorDetails of(Throwable error) {
    Status status = Status.fromThrowable(error);
    String reason = "";
    String domain = "";
    Map<String, String> metadata = Map.of();
    List<FieldViolation> fieldViolations = List.of();
    Duration retryDelay = null;
    List<QuotaViolation> quotaViolations = List.of();
    // StatusProto parses grpc-status-details-bin from the call's trailers into a google.rpc.Status.
    com.google.rpc.Status details = StatusProto.fromThrowable(error);
    for (Any detail : details == null ? List.<Any>of() : details.getDetailsList()) {
      try {
        if (detail.is(ErrorInfo.class)) {
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          reason = info.getReason();
          domain = info.getDomain();
          metadata = new TreeMap<>(info.getMetadataMap());
        } else if (detail.is(BadRequest.class)) {
          fieldViolations = new ArrayList<>();
          for (BadRequest.FieldViolation v : detail.unpack(BadRequest.class).getFieldViolationsList()) {
            fieldViolations.add(new FieldViolation(v.getField(), v.getDescription(), v.getReason()));
          }
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          retryDelay = Duration.ofSeconds(delay.getSeconds(), delay.getNanos());
        } else if (detail.is(QuotaFailure.class)) {
          quotaViolations = new ArrayList<>();
          for (QuotaFailure.Violation v : detail.unpack(QuotaFailure.class).getViolationsList()) {
            Long future = v.hasFutureQuotaValue() ? v.getFutureQuotaValue() : null;
            quotaViolations.add(
                new QuotaViolation(v.getSubject(), v.getDescription(), v.getQuotaId(), v.getQuotaValue(), future));
          }
        }
      } catch (InvalidProtocolBufferException malformed) {
        // A detail that does not parse is skipped: the code and message still say what failed.
      }
    }
    String message = status.getDescription() != null ? status.getDescription() : "";
    return new ErrorDetails(
        status.getCode(), message, reason, domain, metadata, fieldViolations, retryDelay, quotaViolations);
  }

  /** The same JSON object as examples/python's ErrorDetails.to_json(), keys in snake_case. */
  public String toJson() {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("code", code.name());
    out.put("message", message);
    out.put("reason", reason);
    out.put("domain", domain);
    out.put("metadata", metadata);
    List<Object> fields = new ArrayList<>();
    for (FieldViolation v : fieldViolations) {
      fields.add(object("field", v.field(), "description", v.description(), "reason", v.reason()));
    }
    out.put("field_violations", fields);
    out.put("retry_delay_seconds", retryDelay == null ? null : retryDelay.toNanos() / 1e9);
    List<Object> quotas = new ArrayList<>();
    for (QuotaViolation v : quotaViolations) {
      quotas.add(object("subject", v.subject(), "description", v.description(), "quota_id", v.quotaId(),
          "quota_value", v.quotaValue(), "future_quota_value", v.futureQuotaValue()));
    }
    out.put("quota_violations", quotas);
    return Json.write(out);
  }

  private static Map<String, Object> object(Object... keysAndValues) {
    Map<String, Object> out = new LinkedHashMap<>();
    for (int i = 0; i < keysAndValues.length; i += 2) out.put((String) keysAndValues[i], keysAndValues[i + 1]);
    return out;
  }
}
