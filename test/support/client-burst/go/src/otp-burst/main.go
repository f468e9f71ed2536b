// Command otp-burst sends a burst of SendOtp calls through examples/go's
// package otpclient: one connection, a goroutine per call, all started at once.
//
//	OTP_EMAIL_TOKEN=... otp-burst --target HOST:PORT --ca-file ca.pem RECIPIENT...
//
// It prints {"outcomes": [...]}, one a recipient in order: the state SendOtp
// answered, or "CODE: message" of its error. A test's program, not a sample:
// test/support/client-contract.ts runs it (built by go-client.test.ts, with
// this folder on GOPATH).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"

	"example.com/otpemail/otpclient"
	"example.com/otpemail/otpv1"
)

func main() {
	target := flag.String("target", "", "the service's host:port")
	caFile := flag.String("ca-file", "", "PEM CA of the server's certificate")
	flag.Parse()
	recipients := flag.Args()

	client, err := otpclient.Dial(otpclient.Options{Target: *target, CAFile: *caFile, Token: os.Getenv("OTP_EMAIL_TOKEN")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer client.Close()

	outcomes := make([]string, len(recipients))
	// Closed once every goroutine is up, so that the calls reach the connection together.
	start := make(chan struct{})
	var done sync.WaitGroup
	for i, recipient := range recipients {
		done.Add(1)
		go func(i int, recipient string) {
			defer done.Done()
			<-start
			sent, err := client.SendOtp(context.Background(), &otpv1.SendOtpRequest{Recipient: recipient, Purpose: otpv1.Purpose_PURPOSE_LOGIN})
			if err != nil {
				details := otpclient.DetailsOf(err)
				outcomes[i] = otpclient.CodeName(details.Code) + ": " + details.Message
				return
			}
			outcomes[i] = sent.GetState().String()
		}(i, recipient)
	}
	close(start)
	done.Wait()
	out, _ := json.Marshal(map[string][]string{"outcomes": outcomes})
	fmt.Println(string(out))
}
