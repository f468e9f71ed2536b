package example.otpemail;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.ListValue;
import com.google.protobuf.Message;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.BufferedReader;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import otp.v1.OtpEmail.GetDeliveryStatusRequest;
import otp.v1.OtpEmail.Purpose;
import otp.v1.OtpEmail.SendOtpRequest;
import otp.v1.OtpEmail.VerifyOtpRequest;

/**
 * Calls OtpEmail from the command line, as examples/python/otp_client.py does: JSON on stdout; a failed call's
 * {@link ErrorDetails} as JSON on stderr, exit 1; a usage error on stderr, exit 2.
 *
 * <pre>
 * export OTP_EMAIL_TOKEN=...   # the bearer token: never on the command line
 * java -cp "$(cat build/classpath)" example.otpemail.Main --target otp.internal:50051 --ca-file ca.pem \
 *     send --recipient ana@example.com --purpose login --idempotency-key "$(uuidgen)"
 * ... status 01kb2m7q3c5xw9p8h2g4r6t0vn
 * echo 482913 | ... verify --recipient ana@example.com --purpose login
 * </pre>
 *
 * <p>{@code batch} runs many calls on one channel in one JVM: each line of standard input is one command, a JSON
 * array of the arguments above (a {@code verify} line is followed by a line holding the code); each gets one line
 * on stdout, {@code {"response": ...}} or {@code {"error": ...}} ({@code {"usage_error": "..."}} for a bad line).
 */
public final class Main {
  private static final String USAGE = String.join("\n",
      "usage: java example.otpemail.Main [--target HOST:PORT] [--ca-file PEM] [--allow-plaintext-token] COMMAND",
      "  send --recipient ADDRESS --purpose login|signup|password_reset [--locale TAG] [--ttl SECONDS]",
      "       [--idempotency-key KEY] [--end-user-ip IP] [--traceparent HEADER]",
      "  status MESSAGE_ID [--traceparent HEADER]",
      "  verify --recipient ADDRESS --purpose PURPOSE [--traceparent HEADER]   (the code: a line on stdin)",
      "  batch                                    (commands as JSON arrays, one a line on stdin)",
      "The token comes from OTP_EMAIL_TOKEN; --target defaults to OTP_EMAIL_TARGET or 127.0.0.1:50051,",
      "--ca-file to OTP_EMAIL_CA_FILE, --traceparent to TRACEPARENT. Without a CA file the call is plaintext, and",
      "a token is sent that way only to a loopback target (127.0.0.0/8, ::1, localhost); --allow-plaintext-token",
      "sends it to another (a service mesh whose sidecar does the TLS).");

  private static final Map<String, Set<String>> OPTIONS = Map.of(
      "send", Set.of("--recipient", "--purpose", "--locale", "--ttl", "--idempotency-key", "--end-user-ip",
          "--traceparent"),
      "status", Set.of("--traceparent"),
      "verify", Set.of("--recipient", "--purpose", "--traceparent"));

  // Enums as their names, Timestamps as RFC 3339, Durations as "1.5s", int64 as strings: what Python prints.
  private static final JsonFormat.Printer PRINTER =
      JsonFormat.printer().preservingProtoFieldNames().omittingInsignificantWhitespace();

  private Main() {}

  public static void main(String[] argv) throws InterruptedException {
    PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
    PrintStream err = new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    System.exit(run(Arrays.asList(argv), in, out, err));
  }

  static int run(List<String> argv, BufferedReader in, PrintStream out, PrintStream err) throws InterruptedException {
    String target = envOr("OTP_EMAIL_TARGET", "127.0.0.1:50051");
    String caFile = envOr("OTP_EMAIL_CA_FILE", null);
    if (argv.contains("--help") || argv.contains("-h")) {
      out.println(USAGE);
      return 0;
    }
    boolean allowPlaintextToken = false;
    int i = 0;
    while (i < argv.size() && argv.get(i).startsWith("--")) {
      if (argv.get(i).equals("--allow-plaintext-token")) {
        allowPlaintextToken = true;
        i += 1;
        continue;
      }
      if (i + 1 >= argv.size()) return usage(err, argv.get(i) + " needs a value");
      switch (argv.get(i)) {
        case "--target" -> target = argv.get(i + 1);
        case "--ca-file" -> caFile = argv.get(i + 1);
        default -> {
          return usage(err, "unknown option " + argv.get(i));
        }
      }
      i += 2;
    }
    List<String> command = argv.subList(Math.min(i, argv.size()), argv.size());
    if (command.isEmpty()) return usage(err, "no command");
    boolean batch = command.get(0).equals("batch") && command.size() == 1;
    Command single = null;
    if (!batch) {
      try {
        single = Command.parse(command);
      } catch (IllegalArgumentException bad) {
        return usage(err, bad.getMessage());
      }
    }
    try (OtpEmailClient client = OtpEmailClient.connect(
        target, System.getenv("OTP_EMAIL_TOKEN"), caFile == null ? null : new File(caFile), allowPlaintextToken)) {
      return batch ? runBatch(client, in, out) : runOne(client, single, in, out, err);
    } catch (OtpEmailClient.PlaintextTokenRefusedException refused) {
      // A local refusal reads as UNKNOWN, so that stderr's last line is JSON like any failed call's.
      err.println(new ErrorDetails(Status.Code.UNKNOWN, refused.getMessage(), "", "", Map.of(), List.of(), null,
          List.of()).toJson());
      return 1;
    } catch (IOException | RuntimeException error) {
      // Reading the CA file or standard input; a call's own failure is handled where it is made.
      err.println("otp-client: " + error.getMessage());
      return 1;
    }
  }

  private static int runOne(OtpEmailClient client, Command command, BufferedReader in, PrintStream out,
      PrintStream err) throws IOException {
    try {
      out.println(PRINTER.print(command.call(client, in)));
      return 0;
    } catch (StatusRuntimeException error) {
      err.println(ErrorDetails.of(error).toJson());
      return 1;
    }
  }

  private static int runBatch(OtpEmailClient client, BufferedReader in, PrintStream out) throws IOException {
    for (String line = in.readLine(); line != null; line = in.readLine()) {
      if (line.isBlank()) continue;
      Command command;
      List<String> args = null;
      try {
        args = jsonStrings(line);
        command = Command.parse(args);
      } catch (IllegalArgumentException bad) {
        // A refused verify line still has its code on the next line: read it, so the two stay in step.
        if (args != null && args.get(0).equals("verify")) in.readLine();
        out.println(Json.write(Map.of("usage_error", bad.getMessage())));
        continue;
      }
      try {
        out.println("{\"response\":" + PRINTER.print(command.call(client, in)) + "}");
      } catch (StatusRuntimeException error) {
        out.println("{\"error\":" + ErrorDetails.of(error).toJson() + "}");
      }
    }
    return 0;
  }

  /** One command of the CLI, its options checked. */
  private record Command(String name, Map<String, String> options, List<String> positional) {
    static Command parse(List<String> args) {
      String name = args.get(0);
      Set<String> known = OPTIONS.get(name);
      if (known == null) throw new IllegalArgumentException("unknown command " + name);
      Map<String, String> options = new HashMap<>();
      List<String> positional = new ArrayList<>();
      for (int i = 1; i < args.size(); i++) {
        String arg = args.get(i);
        if (!arg.startsWith("--")) {
          positional.add(arg);
        } else if (!known.contains(arg)) {
          throw new IllegalArgumentException(name + ": unknown option " + arg);
        } else if (++i >= args.size()) {
          throw new IllegalArgumentException(name + ": " + arg + " needs a value");
        } else {
          options.put(arg, args.get(i));
        }
      }
      Command command = new Command(name, options, positional);
      if (name.equals("status") && positional.size() != 1) {
        throw new IllegalArgumentException("status takes one MESSAGE_ID");
      }
      if (!name.equals("status") && !positional.isEmpty()) {
        throw new IllegalArgumentException(name + ": unexpected argument " + positional.get(0));
      }
      if (!name.equals("status")) {
        command.required("--recipient");
        command.purpose();
      }
      if (options.containsKey("--ttl")) {
        try {
          Integer.parseUnsignedInt(options.get("--ttl"));
        } catch (NumberFormatException notSeconds) {
          throw new IllegalArgumentException("--ttl takes a whole number of seconds");
        }
      }
      return command;
    }

    String required(String option) {
      String value = options.get(option);
      if (value == null) throw new IllegalArgumentException(name + ": " + option + " is required");
      return value;
    }

    String optional(String option) {
      return options.getOrDefault(option, "");
    }

    Purpose purpose() {
      String purpose = required("--purpose");
      if (!Set.of("login", "signup", "password_reset").contains(purpose)) {
        throw new IllegalArgumentException(name + ": --purpose is one of login, signup, password_reset");
      }
      return Purpose.valueOf("PURPOSE_" + purpose.toUpperCase(Locale.ROOT));
    }

    Message call(OtpEmailClient client, BufferedReader in) throws IOException {
      String traceparent = options.getOrDefault("--traceparent", System.getenv("TRACEPARENT"));
      switch (name) {
        case "send" -> {
          SendOtpRequest.Builder request = SendOtpRequest.newBuilder()
              .setRecipient(required("--recipient"))
              .setPurpose(purpose())
              .setLocale(optional("--locale"))
              .setIdempotencyKey(optional("--idempotency-key"))
              .setEndUserIp(optional("--end-user-ip"));
          if (options.containsKey("--ttl")) {
            request.setTtl(com.google.protobuf.Duration.newBuilder().setSeconds(Long.parseLong(options.get("--ttl"))));
          }
          return client.sendOtp(request.build(), traceparent);
        }
        case "status" -> {
          return client.getDeliveryStatus(
              GetDeliveryStatusRequest.newBuilder().setMessageId(positional.get(0)).build(), traceparent);
        }
        default -> {
          // The code a user typed: on standard input, never on the command line (where ps would show it).
          String code = in.readLine();
          VerifyOtpRequest request = VerifyOtpRequest.newBuilder()
              .setRecipient(required("--recipient"))
              .setPurpose(purpose())
              .setCode(code == null ? "" : code.strip())
              .build();
          return client.verifyOtp(request, traceparent);
        }
      }
    }
  }

  /** A batch line: a JSON array of strings, parsed with protobuf's own JSON reader. */
  private static List<String> jsonStrings(String line) {
    ListValue.Builder list = ListValue.newBuilder();
    try {
      JsonFormat.parser().merge(line, list);
    } catch (InvalidProtocolBufferException notJson) {
      // Not the parser's message: it quotes the line, which may be a code sent out of turn.
      throw new IllegalArgumentException("a batch line is a JSON array of strings");
    }
    List<String> args = new ArrayList<>();
    for (Value value : list.getValuesList()) {
      if (value.getKindCase() != Value.KindCase.STRING_VALUE) {
        throw new IllegalArgumentException("a batch line is a JSON array of strings");
      }
      args.add(value.getStringValue());
    }
    if (args.isEmpty()) throw new IllegalArgumentException("an empty batch line: give a command");
    return args;
  }

  private static int usage(PrintStream err, String problem) {
    err.println("otp-client: " + problem + "\n" + USAGE);
    return 2;
  }

  private static String envOr(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }
}
