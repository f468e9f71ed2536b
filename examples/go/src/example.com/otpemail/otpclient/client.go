// Package otpclient calls OtpEmail (otp.v1.OtpEmailService) from Go through the
// stub that protoc-gen-go-grpc generates (examples/go/generate.sh, into gen/).
// Copy it into your service, next to the generated packages.
//
//	client, err := otpclient.Dial(otpclient.Options{Target: "otp.internal:50051", CAFile: "ca.pem", Token: token})
//	if err != nil { ... }
//	defer client.Close()
//	ctx = otpclient.WithTraceparent(ctx, traceparent) // or let otelgrpc's interceptor inject it
//	sent, err := client.SendOtp(ctx, &otpv1.SendOtpRequest{
//		Recipient: "ana@example.com", Purpose: otpv1.Purpose_PURPOSE_LOGIN,
//		IdempotencyKey: signupID, // the same key when retrying this send
//	})
//	if err != nil {
//		details := otpclient.DetailsOf(err) // .Reason, .FieldViolations, .RetryDelay...
//	}
package otpclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"example.com/otpemail/otpv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// DefaultTimeout is the deadline of a call whose context has none. SendOtp may
// wait for the relay up to the service's SEND_WAIT_BUDGET (3 s by default):
// this allows more.
const DefaultTimeout = 10 * time.Second

// Options says where the service is and how to reach it.
type Options struct {
	// Target is host:port (any grpc-go target: dns:///otp.internal:50051...).
	Target string
	// CAFile is the PEM of the CA that signed the server's certificate. Empty
	// means plaintext, for development only; Dial then refuses a Token.
	CAFile string
	// Token is the bearer token sent in `authorization` on every call, only
	// ever over TLS. Empty sends none.
	Token string
	// Timeout is the deadline of a call whose context has none; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Client is the generated OtpEmailServiceClient (SendOtp, GetDeliveryStatus,
// VerifyOtp) on a connection that adds the token and a default deadline.
type Client struct {
	otpv1.OtpEmailServiceClient
	conn *grpc.ClientConn
}

// Dial opens a connection (lazily: the first call connects) with TLS when
// CAFile is set.
func Dial(options Options) (*Client, error) {
	if options.Target == "" {
		return nil, errors.New("otpclient: no target: set Options.Target to the service's host:port")
	}
	timeout := options.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dialOptions := []grpc.DialOption{grpc.WithUnaryInterceptor(defaultDeadline(timeout))}
	if options.CAFile == "" {
		if options.Token != "" {
			return nil, errors.New("otpclient: refusing to send the token without TLS: set Options.CAFile to the PEM of the service's CA")
		}
		dialOptions = append(dialOptions, grpc.WithInsecure())
	} else {
		tls, err := credentials.NewClientTLSFromFile(options.CAFile, "")
		if err != nil {
			return nil, fmt.Errorf("otpclient: cannot read the CA file %s (PEM of the CA that signed the service's certificate): %w", options.CAFile, err)
		}
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(tls))
	}
	if options.Token != "" {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken(options.Token)))
	}
	conn, err := grpc.Dial(options.Target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("otpclient: %w", err)
	}
	return &Client{OtpEmailServiceClient: otpv1.NewOtpEmailServiceClient(conn), conn: conn}, nil
}

// Close closes the connection; calls in flight fail with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// WithTraceparent returns ctx with the W3C traceparent of the caller's span
// (00-<trace id>-<span id>-<flags>) in the outgoing metadata: the service's
// span and the delivery record take that trace id. With OpenTelemetry, the
// otelgrpc client interceptor (or otel.GetTextMapPropagator().Inject into the
// metadata) does this for you.
func WithTraceparent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent)
}

// bearerToken puts the token in `authorization` and, by requiring transport
// security, makes grpc-go refuse to send it over a plaintext connection.
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return true }

func defaultDeadline(timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
