/**
 * gRPC server reflection (v1 and v1alpha), fed from protobuf-es descriptors,
 * so that `grpcurl list/describe` and `buf curl` work with no .proto file at
 * runtime.
 *
 * `@grpc/reflection` takes a proto-loader PackageDefinition but only reads
 * the `fileDescriptorProtos` of its entries; we give it one entry per file,
 * over the dependency closure of the files we serve (google/protobuf well-known
 * types included), each serialized with protobuf-es.
 */
import { toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { Server } from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";

type PackageDefinition = ConstructorParameters<typeof ReflectionService>[0];

export interface ReflectionOptions {
  /**
   * The files declaring the services to describe (e.g. `file_otp_v1_otp_email`).
   * Their imports are added; every service they declare is listed.
   */
  readonly files: readonly DescFile[];
}

/**
 * Registers grpc.reflection.v1.ServerReflection and its v1alpha twin on the
 * server, describing the given files (pass reflection's own files too, so
 * that `list` names it).
 */
export function addReflection(server: Pick<Server, "addService">, options: ReflectionOptions): void {
  const definition: PackageDefinition = {};
  for (const file of dependencyClosure(options.files)) {
    definition[file.proto.name] = {
      format: "Protocol Buffer 3 DescriptorProto",
      type: {},
      fileDescriptorProtos: [toBuffer(toBinary(FileDescriptorProtoSchema, file.proto))],
    };
  }
  new ReflectionService(definition).addToServer(server);
}

/** The files and everything they import, each once, imports first. */
function dependencyClosure(files: readonly DescFile[]): DescFile[] {
  const seen = new Set<string>();
  const ordered: DescFile[] = [];
  const visit = (file: DescFile): void => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    file.dependencies.forEach(visit);
    ordered.push(file);
  };
  files.forEach(visit);
  return ordered;
}

/** A Buffer view over the bytes, as proto-loader's type wants; no copy. */
function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
