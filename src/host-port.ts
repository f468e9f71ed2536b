/**
 * `host:port` as logs show a listener's address: an IPv6 host in brackets
 * (`[::1]:50051`, never `::1:50051`, which reads as another address and no
 * tool takes), as in URLs and GRPC_ADDR.
 */
export function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
