/**
 * A local OTLP/HTTP receiver, a child process: accepts every export (traces,
 * metrics, logs) on a free loopback port, answers 200 with an empty body (a
 * valid empty Export*ServiceResponse) and counts requests and bytes.
 */
import { createServer } from "node:http";
import { onParentCommand, sendToParent } from "./ipc.js";
import type { ReceiverCommand, ReceiverEvent } from "./protocol.js";

let requests = 0;
let bytes = 0;
const paths: Record<string, number> = {};
const emit = (event: ReceiverEvent): void => sendToParent(event);

const server = createServer((request, response) => {
  request.on("data", (chunk: Buffer) => {
    bytes += chunk.length;
  });
  request.on("end", () => {
    requests++;
    const path = request.url ?? "";
    paths[path] = (paths[path] ?? 0) + 1;
    const type = request.headers["content-type"] ?? "application/x-protobuf";
    response.writeHead(200, { "content-type": type });
    response.end(type.includes("json") ? "{}" : undefined);
  });
});

onParentCommand<ReceiverCommand>((command) => {
  if (command.type === "count") emit({ type: "count", requests, bytes, paths: { ...paths } });
  else server.close(() => process.exit(0));
});

server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("receiver: no TCP address");
  emit({ type: "listening", port: address.port });
});
