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
	"net"
	"strings"
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
	// means plaintext; Dial then refuses a Token unless Target is loopback or
	// AllowPlaintextToken is set.
	CAFile string
	// Token is the bearer token sent in `authorization` on every call: over
	// TLS, or over plaintext to a loopback Target (127.0.0.0/8, ::1,
	// localhost: development, a sidecar on this host). Empty sends none.
	Token string
	// AllowPlaintextToken sends Token over plaintext to a Target that is not
	// loopback: for a service mesh whose sidecar does the TLS, never otherwise.
	AllowPlaintextToken bool
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
	// With TLS the token's credentials require transport security, so grpc-go itself refuses a plaintext
	// connection; without, they may only be sent where they cannot cross a network, or where the caller said so.
	requireTLS := true
	if options.CAFile == "" {
		if options.Token != "" && !options.AllowPlaintextToken && !IsLoopbackTarget(options.Target) {
			return nil, fmt.Errorf("otpclient: refusing to send the token without TLS to %s, which is not loopback: "+
				"set Options.CAFile to the PEM of the service's CA, or Options.AllowPlaintextToken "+
				"(CLI: --allow-plaintext-token) when a sidecar on this host does the TLS", options.Target)
		}
		requireTLS = false
		dialOptions = append(dialOptions, grpc.WithInsecure())
	} else {
		tls, err := credentials.NewClientTLSFromFile(options.CAFile, "")
		if err != nil {
			return nil, fmt.Errorf("otpclient: cannot read the CA file %s (PEM of the CA that signed the service's certificate): %w", options.CAFile, err)
		}
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(tls))
	}
	if options.Token != "" {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken{token: options.Token, requireTLS: requireTLS}))
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

// IsLoopbackTarget reports whether a gRPC target (host:port, [v6]:port,
// dns:///host:port, passthrough:///host:port) names this host's loopback:
// 127.0.0.0/8, ::1 or localhost. It is judged from the name alone, before any
// lookup; other schemes (ipv4:, unix:) read as not loopback.
func IsLoopbackTarget(target string) bool {
	endpoint := target
	for _, scheme := range []string{"dns:", "passthrough:"} {
		if strings.HasPrefix(endpoint, scheme+"//") {
			rest := strings.TrimPrefix(endpoint, scheme+"//")
			slash := strings.Index(rest, "/")
			if slash < 0 {
				return false
			}
			endpoint = rest[slash+1:]
			break
		}
		endpoint = strings.TrimPrefix(endpoint, scheme)
	}
	host := endpoint
	if h, _, err := net.SplitHostPort(endpoint); err == nil {
		host = h
	} else if strings.Contains(endpoint, "://") {
		return false
	}
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bearerToken puts the token in `authorization`. requireTLS is true on a TLS
// connection, so that grpc-go refuses to send it should the connection be
// plaintext after all; Dial sets it false only for plaintext it allowed (a
// loopback target, or AllowPlaintextToken), which grpc-go would refuse
// otherwise.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

func (t bearerToken) RequireTransportSecurity() bool { return t.requireTLS }

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
