/**
 * The framework ceiling, a child process: a bare grpc-js server with the same
 * ServiceDefinition (and so the same protobuf-es codecs) as the service, whose
 * handlers answer at once with a canned response: a real response the service
 * gave in the same run, and the same grpc-js server options. No domain, no
 * Redis, no logging, no interceptors.
 *
 * With an SMTP target it is the gRPC floor instead: SendOtp first sends the
 * message to the request's recipient exactly as the SMTP ceiling does (the
 * bench's own sender: render, build, the pooled transport), then answers. That
 * is the least any gRPC service that sends mail can do per call.
 */
import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { OtpEmailService, type SendOtpRequest } from "../gen/otp/v1/otp_email_pb.js";
import { serverOptions } from "../src/rpc/server.js";
import { serviceDefinition } from "../src/rpc/service-adapter.js";
import { onParentCommand, sendToParent } from "./ipc.js";
import type { EchoCommand, ListeningEvent, RpcMethod, SmtpTarget } from "./protocol.js";
import { createBenchSmtpSender } from "./smtp-sender.js";

const outputs: Readonly<Record<RpcMethod, DescMessage>> = {
  SendOtp: OtpEmailService.method.sendOtp.output,
  GetDeliveryStatus: OtpEmailService.method.getDeliveryStatus.output,
  VerifyOtp: OtpEmailService.method.verifyOtp.output,
};

function start(responses: Readonly<Partial<Record<RpcMethod, string>>>, smtp: SmtpTarget | undefined): void {
  const server = new grpc.Server(serverOptions);
  const sender = smtp === undefined ? undefined : createBenchSmtpSender(smtp);
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(outputs) as RpcMethod[]) {
    const canned = responses[method];
    if (canned === undefined) continue;
    const response = fromBinary(outputs[method], Buffer.from(canned, "base64"));
    implementation[method] =
      method === "SendOtp" && sender !== undefined
        ? ((call: grpc.ServerUnaryCall<SendOtpRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
            void sender.send(call.request.recipient).then((outcome) => {
              if (outcome.ok) callback(null, response);
              else callback({ code: grpc.status.UNAVAILABLE, details: `${outcome.code}: ${outcome.message}` });
            });
          }) satisfies grpc.handleUnaryCall<SendOtpRequest, unknown>
        : ((_call: unknown, callback: grpc.sendUnaryData<unknown>) => {
            callback(null, response);
          }) satisfies grpc.handleUnaryCall<unknown, unknown>;
  }
  const definition = serviceDefinition(OtpEmailService);
  const served = Object.fromEntries(Object.entries(definition).filter(([name]) => name in implementation));
  server.addService(served, implementation);
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
    if (error) throw error;
    const event: ListeningEvent = { type: "listening", port };
    sendToParent(event);
  });
}

onParentCommand<EchoCommand>((command) => {
  if (command.type === "start") start(command.responses, command.smtp);
  else process.exit(0);
});
