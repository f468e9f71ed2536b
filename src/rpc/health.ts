/**
 * grpc.health.v1.Health over a `HealthState`, served through our adapter
 * (from gen/health/v1) so that reflection can describe it.
 *
 * The protocol (https://github.com/grpc/grpc/blob/master/doc/health-checking.md):
 * Check of an unknown service fails with NOT_FOUND; Watch of one streams
 * SERVICE_UNKNOWN and stays open; Watch sends the current status at once,
 * then each change. On shutdown every status turns NOT_SERVING and the Watch
 * streams end with OK, so load balancers stop routing here and clients
 * reconnect elsewhere instead of holding the server open.
 */
import {
  HealthCheckResponse_ServingStatus as ServingStatus,
  type Health,
} from "../../gen/health/v1/health_pb.js";
import { OtpEmailService } from "../../gen/otp/v1/otp_email_pb.js";
import { OtpError } from "../errors.js";
import type { HealthState } from "../health.js";
import type { ServiceImpl } from "./service-adapter.js";

/** The names a health client may ask about: the whole server ("") and our service. */
export const healthCheckedServices: readonly string[] = ["", OtpEmailService.typeName];

export interface HealthServiceOptions {
  readonly health: HealthState;
  /** Service names reported; `healthCheckedServices` by default. */
  readonly services?: readonly string[];
}

/** The Health handlers plus the switch that ends them at shutdown. */
export interface HealthService {
  readonly impl: ServiceImpl<typeof Health>;
  /**
   * Enters the terminal state: every service reads NOT_SERVING from now on,
   * open Watch streams get NOT_SERVING and end. Idempotent.
   */
  close(): void;
}

/** Creates the grpc.health.v1.Health handlers for a HealthState. */
export function createHealthService(options: HealthServiceOptions): HealthService {
  const { health } = options;
  const services = new Set(options.services ?? healthCheckedServices);
  const closers = new Set<() => void>();
  let closed = false;

  const statusOf = (service: string): ServingStatus => {
    if (!services.has(service)) return ServingStatus.SERVICE_UNKNOWN;
    return !closed && health.isServing() ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  };

  const impl: ServiceImpl<typeof Health> = {
    check(request) {
      const status = statusOf(request.service);
      if (status === ServingStatus.SERVICE_UNKNOWN) {
        return Promise.reject(
          new OtpError("not_found", `unknown service; ask about "" or ${OtpEmailService.typeName}`, {
            reason: "SERVICE_UNKNOWN",
          }),
        );
      }
      return Promise.resolve({ status });
    },

    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const service of services) statuses[service] = { status: statusOf(service) };
      return Promise.resolve({ statuses });
    },

    async watch(request, { send, signal }) {
      let last: ServingStatus | undefined;
      const sendIfChanged = (): void => {
        const status = statusOf(request.service);
        if (status === last) return;
        last = status;
        send({ status });
      };
      sendIfChanged();
      if (closed) return;
      await new Promise<void>((resolve) => {
        const unsubscribe = health.onChange(sendIfChanged);
        const stop = (): void => {
          unsubscribe();
          closers.delete(stop);
          signal.removeEventListener("abort", stop);
          resolve();
        };
        signal.addEventListener("abort", stop, { once: true });
        closers.add(stop);
      });
      // Ended by close() (not by the client): say NOT_SERVING before the stream ends.
      if (!signal.aborted) sendIfChanged();
    },
  };

  return {
    impl,
    close() {
      closed = true;
      for (const stop of [...closers]) stop();
    },
  };
}
