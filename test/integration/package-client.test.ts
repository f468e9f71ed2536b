/**
 * The Node client as another service installs it: `npm pack ./clients/node`
 * run in a fresh copy of the checkout (no dist/, as a clone has none), the
 * tarball extracted into a consumer project's node_modules/otp-email-client
 * next to the package's declared "dependencies" only, then
 * - its package.json declares exactly the client's runtime dependencies
 *   (connect, connect-node, protobuf-es, the OpenTelemetry API), with the
 *   repository's version ranges, and nothing of the server;
 * - a consumer ESM script imports "otp-email-client" and calls a real service
 *   over a real socket (SendOtp, GetDeliveryStatus, VerifyOtp with the mailed
 *   code, and the rich error details);
 * - a consumer TypeScript file typechecks against the packed .d.ts (strict,
 *   NodeNext, library files checked too);
 * - the tarball holds the compiled client, its types, the contract and the
 *   licence, and no sources, tests, bench, CI, deploy files, keys or .env files.
 * The repository root is the service: private, not the client package, and a
 * fresh clone still builds it before `npm start`.
 *
 * The consumer gets a symlink per name in the packed package.json's
 * "dependencies", nothing else of ours (no devDependencies): the package's own
 * files resolve their imports from the consumer's node_modules, so an import
 * of a dev dependency would fail here as it would for a real consumer. Each
 * linked package resolves its own imports from its real location, as an
 * installed one would from the consumer's tree. `@types/node` is linked as
 * the consumer's own: any TypeScript service on Node has it.
 */
import { spawn } from "node:child_process";
import { existsSync, realpathSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { codeFromMail, startTestService, type TestService } from "../support/service.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const rootModules = realpathSync(join(root, "node_modules"));
const tsc = join(rootModules, "typescript/bin/tsc");

interface Run {
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command without blocking the event loop (the service under test answers in this process). */
function run(command: string, args: readonly string[], cwd: string, timeoutMs = 180_000): Promise<Run> {
  const child = spawn(command, args, {
    cwd,
    // npm offline and quiet: nothing here may reach a registry.
    env: { ...process.env, npm_config_offline: "true", npm_config_update_notifier: "false", npm_config_fund: "false", npm_config_audit: "false" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} did not finish within ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint = error.code === "ENOENT" ? ` (${command} is not on PATH; on Debian: apt-get install ${command})` : "";
      reject(new Error(`could not run ${command}: ${error.message}${hint}`, { cause: error }));
    });
    child.on("close", (exitCode) => {
      clearTimeout(timer);
      resolve({ exitCode, stdout, stderr });
    });
  });
}

async function mustRun(command: string, args: readonly string[], cwd: string): Promise<Run> {
  const result = await run(command, args, cwd);
  if (result.exitCode !== 0) {
    throw new Error(`${command} ${args.join(" ")} exited ${result.exitCode}\n${result.stdout}\n${result.stderr}`);
  }
  return result;
}

/** What a fresh clone (plus uncommitted work) holds: tracked and untracked files git does not ignore. */
async function copyCheckout(destination: string): Promise<void> {
  const listed = await mustRun("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], root);
  for (const file of listed.stdout.split("\0")) {
    if (file === "" || file === "node_modules" || !existsSync(join(root, file))) continue;
    await mkdir(dirname(join(destination, file)), { recursive: true });
    await copyFile(join(root, file), join(destination, file));
  }
}

/** `@scope/name/sub` -> `@scope/name`, `name/sub` -> `name`. */
function packageName(specifier: string): string {
  const parts = specifier.split("/");
  return (specifier.startsWith("@") ? parts.slice(0, 2) : parts.slice(0, 1)).join("/");
}

/** The module specifiers of the top-level import/export statements tsc emitted (JSDoc examples are indented). */
function importsOf(source: string): string[] {
  const found: string[] = [];
  for (const match of source.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']|^import\s*["']([^"']+)["']/gm)) {
    found.push(match[1] ?? match[2] ?? "");
  }
  return found;
}

let tmp = "";
let checkout = "";
let consumer = "";
/** Paths in the tarball, relative to the package root (`dist/src/client.js`). */
let packed: string[] = [];
interface Manifest {
  name?: string;
  version?: string;
  license?: string;
  type?: string;
  private?: boolean;
  engines?: Record<string, string>;
  exports?: unknown;
  files?: unknown;
  scripts?: Record<string, string>;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}
let packedManifest: Manifest = {};
/** The repository root's package.json: the service. */
let rootManifest: Manifest = {};
const installedName = "otp-email-client";
let service: TestService | undefined;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "otp-package-"));
  checkout = join(tmp, "checkout");
  consumer = join(tmp, "consumer");
  // Nothing above the consumer may hold a node_modules: resolution walks up.
  for (let dir = dirname(consumer); dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, "node_modules"))) throw new Error(`${join(dir, "node_modules")} exists; the consumer would resolve from it`);
  }

  await copyCheckout(checkout);
  await symlink(rootModules, join(checkout, "node_modules"), "dir");
  const destination = join(tmp, "packed");
  await mkdir(destination);
  rootManifest = JSON.parse(await readFile(join(checkout, "package.json"), "utf8")) as Manifest;
  // As README says: from the checkout's root, with the repository's dependencies installed.
  await mustRun("npm", ["pack", "./clients/node", "--pack-destination", destination], checkout);
  const [tarball] = await readdir(destination);
  if (tarball === undefined) throw new Error("npm pack wrote no tarball");
  const listing = await mustRun("tar", ["-tzf", join(destination, tarball)], tmp);
  packed = listing.stdout
    .split("\n")
    .filter((line) => line !== "" && !line.endsWith("/"))
    .map((line) => line.replace(/^package\//, ""));

  const installed = join(consumer, "node_modules", installedName);
  await mkdir(installed, { recursive: true });
  await mustRun("tar", ["-xzf", join(destination, tarball), "-C", installed, "--strip-components=1"], tmp);
  packedManifest = JSON.parse(await readFile(join(installed, "package.json"), "utf8")) as Manifest;
  for (const name of [...Object.keys(packedManifest.dependencies ?? {}), "@types/node"]) {
    const target = join(rootModules, name);
    if (!existsSync(target)) throw new Error(`${name} is not in node_modules: run npm ci`);
    await mkdir(dirname(join(consumer, "node_modules", name)), { recursive: true });
    await symlink(realpathSync(target), join(consumer, "node_modules", name), "dir");
  }
  await writeFile(join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));

  // The resend cooldown on, so that the consumer sees a RetryInfo.
  service = await startTestService({ env: { LIMIT_RESEND_COOLDOWN: "30s" } });
}, 300_000);

afterAll(async () => {
  await service?.stop();
  if (tmp !== "") await rm(tmp, { recursive: true, force: true });
});

describe("the Node client installed from the package (npm pack)", () => {
  it("is otp-email-client, at the repository's version, licence and engines, an ES module", async () => {
    expect(packedManifest).toMatchObject({
      name: installedName,
      version: rootManifest.version,
      license: "Apache-2.0",
      type: "module",
      engines: rootManifest.engines,
    });
    expect(await readFile(join(consumer, "node_modules", installedName, "LICENSE"), "utf8")).toBe(await readFile(join(root, "LICENSE"), "utf8"));
  });

  it("depends on exactly what the client imports at run time, with the repository's version ranges, and on nothing of the server", () => {
    const dependencies = packedManifest.dependencies ?? {};
    expect(Object.keys(dependencies).sort()).toEqual(["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node", "@opentelemetry/api"]);
    for (const [name, range] of Object.entries(dependencies)) {
      expect(range, `${name}: the range the service is tested with`).toBe(rootManifest.dependencies?.[name]);
    }
    const server = Object.keys(dependencies).filter((name) =>
      /^(ioredis|nodemailer|smtp-server|mailparser|mailauth|pino|prom-client|@grpc\/|@opentelemetry\/(?!api$))/.test(name),
    );
    expect(server).toEqual([]);
    expect(packedManifest.devDependencies ?? {}).toEqual({});
  });

  it("the tarball holds the compiled client, its types, the generated messages and the contract", () => {
    expect(packed).toEqual(
      expect.arrayContaining([
        "package.json",
        "README.md",
        "LICENSE",
        "dist/src/client.js",
        "dist/src/client.d.ts",
        "dist/gen/otp/v1/otp_email_pb.js",
        "dist/gen/otp/v1/otp_email_pb.d.ts",
        "proto/otp/v1/otp_email.proto",
      ]),
    );
  });

  it("holds no sources, tests, bench, CI, deploy or examples, no source maps, keys or .env files, and not the server", () => {
    const shipped = /^dist\/src\/(client|client-session|telemetry\/client-tracing|telemetry\/semconv)\.(js|d\.ts)$/;
    const unwanted = packed.filter(
      (path) =>
        /^(src|gen|test|bench|\.ci|deploy|examples|scripts)\//.test(path) ||
        (path.endsWith(".ts") && !path.endsWith(".d.ts")) ||
        /\.(map|pem|key|crt|p12)$/.test(path) ||
        /(^|\/)\.env($|\.)/.test(path) ||
        /^(Dockerfile|docker-compose\.yml|tsconfig.*\.json|eslint\.config\.js|package-lock\.json|build\.mjs)$/.test(path) ||
        // The server (main.js and everything only it imports) runs from the repo or the image, not from here.
        (path.startsWith("dist/src/") && !shipped.test(path)),
    );
    expect(unwanted).toEqual([]);
  });

  it("every import in the packed files resolves inside the tarball or to a declared dependency", async () => {
    const dependencies = Object.keys(packedManifest.dependencies ?? {});
    const unresolved: string[] = [];
    for (const file of packed.filter((path) => /\.(js|d\.ts)$/.test(path))) {
      const source = await readFile(join(consumer, "node_modules/otp-email-client", file), "utf8");
      for (const specifier of importsOf(source)) {
        if (specifier.startsWith(".")) {
          const target = posix.join(posix.dirname(file), specifier);
          const wanted = file.endsWith(".d.ts") ? target.replace(/\.js$/, ".d.ts") : target;
          if (!packed.includes(wanted)) unresolved.push(`${file}: ${specifier} (${wanted} is not in the tarball)`);
        } else if (!specifier.startsWith("node:") && !dependencies.includes(packageName(specifier))) {
          unresolved.push(`${file}: ${specifier} (not in "dependencies")`);
        }
      }
    }
    expect(unresolved).toEqual([]);
  });

  it("a consumer ESM script imports it and sends, reads the delivery status and verifies the mailed code over a real socket", async () => {
    const app = join(consumer, "app.mjs");
    await writeFile(
      app,
      [
        'import { Code, createOtpEmailClient, DeliveryState, errorDetailsOf, Purpose, VerifyResult } from "otp-email-client";',
        "const [command, baseUrl, recipient, code] = process.argv.slice(2);",
        "const client = createOtpEmailClient({ baseUrl });",
        'const resolved = import.meta.resolve("otp-email-client");',
        'if (command === "send") {',
        '  const sent = await client.sendOtp({ recipient, purpose: Purpose.LOGIN, locale: "en" });',
        "  const status = await client.getDeliveryStatus({ messageId: sent.messageId });",
        "  console.log(JSON.stringify({ resolved, messageId: sent.messageId, sent: DeliveryState[sent.state],",
        "    statusOf: status.messageId, status: DeliveryState[status.state], recipient: status.recipient }));",
        '} else if (command === "refused") {',
        "  const failures = [];",
        '  for (const request of [{ recipient: "ana@example.com\\r\\nBcc: x@example.com", purpose: Purpose.LOGIN }, { recipient, purpose: Purpose.LOGIN }]) {',
        "    try { await client.sendOtp(request); failures.push(null); } catch (error) {",
        "      const details = errorDetailsOf(error);",
        "      failures.push({ ...details, code: Code[details.code] });",
        "    }",
        "  }",
        "  console.log(JSON.stringify(failures));",
        "} else {",
        "  const verified = await client.verifyOtp({ recipient, purpose: Purpose.LOGIN, code });",
        "  console.log(JSON.stringify({ resolved, result: VerifyResult[verified.result], attemptsRemaining: verified.attemptsRemaining }));",
        "}",
      ].join("\n"),
    );
    const baseUrl = `http://${service?.address ?? "?"}`;
    const recipient = "ana@example.com";
    const before = service?.sink.messages.length ?? 0;

    const sent = await run(process.execPath, [app, "send", baseUrl, recipient], consumer, 30_000);
    expect(sent.stderr).toBe("");
    expect(sent.exitCode).toBe(0);
    const answer = JSON.parse(sent.stdout) as Record<string, unknown>;
    expect(answer).toMatchObject({
      resolved: pathToFileURL(join(consumer, "node_modules/otp-email-client/dist/src/client.js")).href,
      sent: "ACCEPTED",
      statusOf: answer["messageId"],
      status: "ACCEPTED",
      recipient: "a***@example.com",
    });
    const [mail] = ((await service?.sink.waitForMessages(before + 1)) ?? []).slice(before);
    expect(mail?.envelope.rcptTo).toEqual([recipient]);
    const code = codeFromMail(mail?.parsed.subject);

    const wrong = await run(process.execPath, [app, "verify", baseUrl, recipient, code === "000000" ? "111111" : "000000"], consumer, 30_000);
    expect(JSON.parse(wrong.stdout)).toMatchObject({ result: "INVALID", attemptsRemaining: 4 });
    const verified = await run(process.execPath, [app, "verify", baseUrl, recipient, code], consumer, 30_000);
    expect(verified.exitCode).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ result: "VERIFIED" });

    // The rich error details, decoded with what the package exports: a bad field, then the resend cooldown.
    const refused = await run(process.execPath, [app, "refused", baseUrl, recipient], consumer, 30_000);
    expect(refused.stderr).toBe("");
    const [bad, cooldown] = JSON.parse(refused.stdout) as Record<string, unknown>[];
    expect(bad).toMatchObject({
      code: "InvalidArgument",
      reason: "RECIPIENT_INVALID",
      fieldViolations: [expect.objectContaining({ field: "recipient" })],
    });
    expect(cooldown).toMatchObject({ code: "ResourceExhausted", reason: "RESEND_COOLDOWN" });
    expect(cooldown?.["retryDelayMs"]).toBeGreaterThan(0);
  });

  it("a consumer script that closes nothing exits at once: after a call, and after a request over the service's 2 MiB, refused before it is sent", async () => {
    const app = join(consumer, "exit.mjs");
    await writeFile(
      app,
      [
        'import { Code, createOtpEmailClient, errorDetailsOf, maxRequestBytes, Purpose } from "otp-email-client";',
        "const [command, baseUrl] = process.argv.slice(2);",
        "const client = createOtpEmailClient({ baseUrl });",
        'const recipient = command === "oversized" ? `${"x".repeat(maxRequestBytes + 1024)}@example.com` : "exit@example.com";',
        "try {",
        "  await client.sendOtp({ recipient, purpose: Purpose.LOGIN });",
        '  console.log(JSON.stringify({ code: "OK" }));',
        "} catch (error) {",
        "  const { code, message } = errorDetailsOf(error);",
        "  console.log(JSON.stringify({ code: Code[code], message }));",
        "}",
      ].join("\n"),
    );
    const baseUrl = `http://${service?.address ?? "?"}`;
    const exits: Record<string, unknown>[] = [];
    for (const command of ["ok", "oversized"]) {
      const started = Date.now();
      // Far above the 5 s asserted below: a process held open fails the assertion, not the run.
      const exited = await run(process.execPath, [app, command, baseUrl], consumer, 20_000);
      expect(exited.stderr).toBe("");
      exits.push({ command, exitCode: exited.exitCode, fast: Date.now() - started < 5_000, ...(JSON.parse(exited.stdout) as object) });
    }
    expect(exits).toEqual([
      { command: "ok", exitCode: 0, fast: true, code: "OK" },
      // The client's own refusal: the service's would read "Received message larger than max".
      { command: "oversized", exitCode: 0, fast: true, code: "ResourceExhausted", message: expect.stringMatching(/writeMaxBytes 2097152$/) as unknown },
    ]);
  });

  it("a consumer TypeScript file typechecks against the packed .d.ts (strict, NodeNext, library files checked), and misuse is an error", async () => {
    await writeFile(
      join(consumer, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2023",
          // connect's own declarations name fetch's HeadersInit, which only lib DOM declares
          // (connectrpc/connect-es#481): with skipLibCheck off, any connect user needs it.
          lib: ["ES2023", "DOM"],
          module: "NodeNext",
          moduleResolution: "NodeNext",
          types: ["node"],
          strict: true,
          verbatimModuleSyntax: true,
          skipLibCheck: false,
          noEmit: true,
        },
        files: ["service.ts"],
      }),
    );
    // An untyped module imported by a .d.ts quietly becomes `any` (a dependency whose types live in a
    // dev dependency's @types package, say); imported by the consumer's own file it is an error (TS7016).
    const typedImports = new Set<string>();
    for (const file of packed.filter((path) => path.endsWith(".d.ts"))) {
      const source = await readFile(join(consumer, "node_modules/otp-email-client", file), "utf8");
      for (const specifier of importsOf(source)) if (!specifier.startsWith(".")) typedImports.add(specifier);
    }
    expect(typedImports.size).toBeGreaterThan(0);
    await writeFile(
      join(consumer, "service.ts"),
      [
        ...[...typedImports].map((specifier, index) => `import type * as declared${index} from "${specifier}";`),
        "import {",
        "  Code, createOtpEmailClient, DeliveryState, errorDetailsOf, Purpose, VerifyResult,",
        "  type OtpEmailClient, type OtpEmailClientOptions, type OtpErrorDetails, type SendOtpResponse,",
        '} from "otp-email-client";',
        "",
        'const options: OtpEmailClientOptions = { baseUrl: "https://otp.internal:50051", token: "t", timeoutMs: 5000, tls: { ca: Buffer.from("") } };',
        "const client: OtpEmailClient = createOtpEmailClient(options);",
        "",
        "export async function signIn(recipient: string, typed: string): Promise<boolean> {",
        '  const sent: SendOtpResponse = await client.sendOtp({ recipient, purpose: Purpose.LOGIN, locale: "en" });',
        "  const status = await client.getDeliveryStatus({ messageId: sent.messageId });",
        "  const accepted: boolean = status.state === DeliveryState.ACCEPTED;",
        "  const { result, attemptsRemaining } = await client.verifyOtp({ recipient, purpose: Purpose.LOGIN, code: typed });",
        "  const left: number = attemptsRemaining;",
        "  return accepted && left >= 0 && result === VerifyResult.VERIFIED;",
        "}",
        "",
        "export async function retryDelay(recipient: string): Promise<number | undefined> {",
        "  try {",
        "    await client.sendOtp({ recipient, purpose: Purpose.LOGIN });",
        "    return undefined;",
        "  } catch (error) {",
        "    const details: OtpErrorDetails = errorDetailsOf(error);",
        "    return details.code === Code.ResourceExhausted ? details.retryDelayMs : undefined;",
        "  }",
        "}",
        "",
        "// The types are real, not `any`: each misuse below must be an error.",
        "// @ts-expect-error purpose is the Purpose enum, not a string",
        'void client.sendOtp({ recipient: "ana@example.com", purpose: "login" });',
        "// @ts-expect-error the service has no such method",
        "void client.sendSms({});",
        "// @ts-expect-error baseUrl is required",
        'createOtpEmailClient({ token: "t" });',
      ].join("\n"),
    );
    const checked = await run(process.execPath, [tsc, "-p", consumer], consumer, 120_000);
    expect(checked.stdout + checked.stderr).toBe("");
    expect(checked.exitCode).toBe(0);
    // tsc's own budget: a loaded machine took more than vitest's default 30 s.
  }, 130_000);
});

describe("the repository root is the service, not the client package", () => {
  it("is private (the service runs from its image or a checkout) and exports, ships and packs nothing", () => {
    expect(rootManifest.private).toBe(true);
    expect(rootManifest).not.toHaveProperty("exports");
    expect(rootManifest).not.toHaveProperty("files");
    expect(rootManifest.scripts ?? {}).not.toHaveProperty("prepack");
  });

  it("a fresh clone still builds the service before `npm start` (prestart)", async () => {
    await rm(join(checkout, "dist"), { recursive: true, force: true });
    await mustRun("npm", ["run", "prestart"], checkout);
    expect(existsSync(join(checkout, "dist/src/main.js"))).toBe(true);
    expect(existsSync(join(checkout, "dist/src/telemetry/bootstrap.js"))).toBe(true);
  }, 240_000);
});
