import com.google.gson.Gson;
import example.otpemail.ErrorDetails;
import example.otpemail.OtpEmailClient;
import io.grpc.StatusRuntimeException;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import otp.v1.OtpEmail.Purpose;
import otp.v1.OtpEmail.SendOtpRequest;

/**
 * A burst of SendOtp calls through examples/java's OtpEmailClient: one channel, a thread per call, all started at
 * once. Run from source on the example's class path:
 *
 * <pre>
 * OTP_EMAIL_TOKEN=... java -cp "$(cat examples/java/build/classpath)" Burst.java --target HOST:PORT --ca-file ca.pem RECIPIENT...
 * </pre>
 *
 * <p>Prints {@code {"outcomes": [...]}}, one a recipient in order: the state SendOtp answered, or {@code CODE: message}
 * of its error. A test's program, not a sample: test/support/client-contract.ts runs it.
 */
public final class Burst {
  public static void main(String[] argv) throws Exception {
    if (argv.length < 5 || !argv[0].equals("--target") || !argv[2].equals("--ca-file")) {
      System.err.println("usage: Burst --target HOST:PORT --ca-file CA.pem RECIPIENT...");
      System.exit(2);
    }
    List<String> recipients = List.of(argv).subList(4, argv.length);
    List<String> outcomes = new ArrayList<>();
    try (OtpEmailClient client = OtpEmailClient.connect(argv[1], System.getenv("OTP_EMAIL_TOKEN"), new File(argv[3]))) {
      ExecutorService threads = Executors.newFixedThreadPool(recipients.size());
      // Every call waits here until all threads are up, so that they reach the channel together.
      CountDownLatch start = new CountDownLatch(recipients.size());
      List<Future<String>> calls = new ArrayList<>();
      for (String recipient : recipients) {
        calls.add(threads.submit(() -> {
          start.countDown();
          start.await();
          try {
            SendOtpRequest request =
                SendOtpRequest.newBuilder().setRecipient(recipient).setPurpose(Purpose.PURPOSE_LOGIN).build();
            return client.sendOtp(request, null).getState().name();
          } catch (StatusRuntimeException error) {
            ErrorDetails details = ErrorDetails.of(error);
            return details.code().name() + ": " + details.message();
          }
        }));
      }
      for (Future<String> call : calls) outcomes.add(call.get());
      threads.shutdown();
    }
    // Gson: on the class path for grpc-core.
    System.out.println(new Gson().toJson(Map.of("outcomes", outcomes)));
  }
}
