// Command otp-client calls OtpEmail through package otpclient: JSON on stdout;
// a failed call's details as JSON on stderr, exit 1.
//
//	export OTP_EMAIL_TOKEN=...   # the bearer token: never on the command line
//	otp-client --target otp.internal:50051 --ca-file ca.pem \
//	    send --recipient ana@example.com --purpose login --idempotency-key "$(uuidgen)"
//	otp-client --target otp.internal:50051 --ca-file ca.pem status 01kb2m7q3c5xw9p8h2g4r6t0vn
//	echo 482913 | otp-client --target otp.internal:50051 --ca-file ca.pem \
//	    verify --recipient ana@example.com --purpose login
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"example.com/otpemail/otpclient"
	"example.com/otpemail/otpv1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

const usage = `usage: otp-client [--target host:port] [--ca-file ca.pem] [--allow-plaintext-token] COMMAND [flags]

Calls OtpEmail; the bearer token comes from OTP_EMAIL_TOKEN. Without --ca-file the call is plaintext, and a
token is sent that way only to a loopback target (127.0.0.0/8, ::1, localhost) unless --allow-plaintext-token.
Commands:
  send --recipient ADDRESS --purpose login|signup|password_reset [--locale ko] [--ttl SECONDS]
       [--idempotency-key KEY] [--end-user-ip IP] [--traceparent TP]    SendOtp
  status [--traceparent TP] MESSAGE_ID                                   GetDeliveryStatus
  verify --recipient ADDRESS --purpose PURPOSE [--traceparent TP]       VerifyOtp; the code is read from standard input
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("otp-client", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	target := global.String("target", envOr("OTP_EMAIL_TARGET", "127.0.0.1:50051"), "the service's host:port")
	caFile := global.String("ca-file", os.Getenv("OTP_EMAIL_CA_FILE"),
		"PEM CA of the server's certificate; without it the call is plaintext, and a token is sent that way only to a loopback target")
	allowPlaintextToken := global.Bool("allow-plaintext-token", false,
		"send the token over plaintext to a target that is not loopback (a service mesh whose sidecar does the TLS)")
	if err := global.Parse(args); err != nil {
		return 2
	}
	if global.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	command, rest := global.Arg(0), global.Args()[1:]

	flags := flag.NewFlagSet(command, flag.ContinueOnError)
	flags.SetOutput(stderr)
	traceparent := flags.String("traceparent", os.Getenv("TRACEPARENT"), "W3C traceparent of the caller's span")
	recipient := flags.String("recipient", "", "the email address")
	purpose := flags.String("purpose", "", "login, signup or password_reset")
	locale := flags.String("locale", "", "the mail's language (en, ko...)")
	ttl := flags.Int("ttl", 0, "seconds the code stays valid (0: the service's default)")
	idempotencyKey := flags.String("idempotency-key", "", "one per user action, the same when retrying it")
	endUserIP := flags.String("end-user-ip", "", "the end user's IP, for the per-IP limit")
	if err := flags.Parse(rest); err != nil {
		return 2
	}

	var call func(context.Context, *otpclient.Client) (proto.Message, error)
	switch command {
	case "send":
		p, ok := parsePurpose(*purpose)
		if *recipient == "" || !ok {
			fmt.Fprintln(stderr, "otp-client send: --recipient and --purpose (login, signup or password_reset) are required")
			return 2
		}
		request := &otpv1.SendOtpRequest{Recipient: *recipient, Purpose: p, Locale: *locale,
			IdempotencyKey: *idempotencyKey, EndUserIp: *endUserIP}
		if *ttl > 0 {
			request.Ttl = durationpb.New(time.Duration(*ttl) * time.Second)
		}
		call = func(ctx context.Context, c *otpclient.Client) (proto.Message, error) { return c.SendOtp(ctx, request) }
	case "status":
		if flags.NArg() != 1 {
			fmt.Fprintln(stderr, "otp-client status: give one MESSAGE_ID")
			return 2
		}
		request := &otpv1.GetDeliveryStatusRequest{MessageId: flags.Arg(0)}
		call = func(ctx context.Context, c *otpclient.Client) (proto.Message, error) {
			return c.GetDeliveryStatus(ctx, request)
		}
	case "verify":
		p, ok := parsePurpose(*purpose)
		if *recipient == "" || !ok {
			fmt.Fprintln(stderr, "otp-client verify: --recipient and --purpose (login, signup or password_reset) are required")
			return 2
		}
		// From standard input, so the code shows in no process list or shell history.
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			fmt.Fprintln(stderr, "otp-client verify: cannot read the code from standard input:", err)
			return 2
		}
		request := &otpv1.VerifyOtpRequest{Recipient: *recipient, Purpose: p, Code: strings.TrimSpace(line)}
		call = func(ctx context.Context, c *otpclient.Client) (proto.Message, error) {
			return c.VerifyOtp(ctx, request)
		}
	default:
		fmt.Fprintf(stderr, "otp-client: unknown command %q\n%s", command, usage)
		return 2
	}

	client, err := otpclient.Dial(otpclient.Options{Target: *target, CAFile: *caFile, Token: os.Getenv("OTP_EMAIL_TOKEN"),
		AllowPlaintextToken: *allowPlaintextToken})
	if err != nil {
		// A local refusal reads as UNKNOWN, so that stderr's last line is JSON like any failed call's.
		return fail(stderr, err)
	}
	defer client.Close()
	response, err := call(otpclient.WithTraceparent(context.Background(), *traceparent), client)
	if err != nil {
		return fail(stderr, err)
	}
	// Enums as their names, Timestamps as RFC 3339, Durations as "1.5s", int64 as strings.
	out, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(response)
	if err != nil {
		fmt.Fprintln(stderr, "otp-client: cannot print the response:", err)
		return 1
	}
	fmt.Fprintln(stdout, string(out))
	return 0
}

func fail(stderr io.Writer, err error) int {
	out, _ := json.Marshal(otpclient.DetailsOf(err))
	fmt.Fprintln(stderr, string(out))
	return 1
}

func parsePurpose(name string) (otpv1.Purpose, bool) {
	value, ok := otpv1.Purpose_value["PURPOSE_"+strings.ToUpper(name)]
	return otpv1.Purpose(value), ok && value != 0
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
