package otpclient

import (
	"encoding/json"
	"time"

	"example.com/otpemail/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDetails is a failed call with the google.rpc details the service sends
// in grpc-status-details-bin (AIP-193).
type ErrorDetails struct {
	Code    codes.Code // InvalidArgument, ResourceExhausted, Unauthenticated...
	Message string
	// ErrorInfo: why, in a stable machine-readable form.
	Reason   string            // RESEND_COOLDOWN, TOKEN_INVALID, RECIPIENT_SUPPRESSED...
	Domain   string            // "otp-email"
	Metadata map[string]string // message_id, limit, retry_at...
	// BadRequest: the request fields at fault.
	FieldViolations []*errdetails.BadRequest_FieldViolation
	// RetryInfo: do not retry sooner. Nil when the service sent none.
	RetryDelay *time.Duration
	// QuotaFailure: the limits that refused the call.
	QuotaViolations []*errdetails.QuotaFailure_Violation
}

// DetailsOf reads err's gRPC status and details. An error that is not a gRPC
// status reads as codes.Unknown with the error's text.
func DetailsOf(err error) ErrorDetails {
	st := status.Convert(err)
	details := ErrorDetails{Code: st.Code(), Message: st.Message()}
	// Details() unpacks each Any through the protobuf registry, where the
	// generated errdetails package registered the google.rpc types.
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			details.Reason, details.Domain, details.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.BadRequest:
			details.FieldViolations = d.GetFieldViolations()
		case *errdetails.RetryInfo:
			delay := d.GetRetryDelay().AsDuration()
			details.RetryDelay = &delay
		case *errdetails.QuotaFailure:
			details.QuotaViolations = d.GetViolations()
		}
	}
	return details
}

// codeNames are the canonical names (google.rpc.Code), which codes.Code's
// String() spells in CamelCase instead.
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// CodeName is code's canonical name: INVALID_ARGUMENT, RESOURCE_EXHAUSTED...
func CodeName(code codes.Code) string {
	if int(code) < len(codeNames) {
		return codeNames[code]
	}
	return code.String()
}

// MarshalJSON writes the details with snake_case keys, the code by its
// canonical name and the retry delay in seconds (null when absent).
func (d ErrorDetails) MarshalJSON() ([]byte, error) {
	type fieldViolation struct {
		Field       string `json:"field"`
		Description string `json:"description"`
		Reason      string `json:"reason"`
	}
	type quotaViolation struct {
		Subject     string `json:"subject"`
		Description string `json:"description"`
		QuotaID     string `json:"quota_id"`
		QuotaValue  int64  `json:"quota_value"`
		// A proto3 `optional` field: nil (JSON null) tells "unset" from 0.
		FutureQuotaValue *int64 `json:"future_quota_value"`
	}
	out := struct {
		Code              string            `json:"code"`
		Message           string            `json:"message"`
		Reason            string            `json:"reason"`
		Domain            string            `json:"domain"`
		Metadata          map[string]string `json:"metadata"`
		FieldViolations   []fieldViolation  `json:"field_violations"`
		RetryDelaySeconds *float64          `json:"retry_delay_seconds"`
		QuotaViolations   []quotaViolation  `json:"quota_violations"`
	}{
		Code: CodeName(d.Code), Message: d.Message, Reason: d.Reason, Domain: d.Domain, Metadata: d.Metadata,
		FieldViolations: []fieldViolation{}, QuotaViolations: []quotaViolation{},
	}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	for _, v := range d.FieldViolations {
		out.FieldViolations = append(out.FieldViolations, fieldViolation{v.GetField(), v.GetDescription(), v.GetReason()})
	}
	if d.RetryDelay != nil {
		seconds := d.RetryDelay.Seconds()
		out.RetryDelaySeconds = &seconds
	}
	for _, v := range d.QuotaViolations {
		out.QuotaViolations = append(out.QuotaViolations, quotaViolation{
			v.GetSubject(), v.GetDescription(), v.GetQuotaId(), v.GetQuotaValue(), v.FutureQuotaValue,
		})
	}
	return json.Marshal(out)
}
