/**
 * TEMPLATES_DIR changed on disk is mailed without a restart: the real app on
 * real Redis, SendOtp over a real gRPC socket, the mail read back from a real
 * SMTP sink. The folder is changed the ways operators change it (a file
 * renamed over the old one, a Kubernetes ConfigMap's `..data` link swapped to
 * a new folder), then the poll (TEMPLATES_RELOAD_INTERVAL) or a reload
 * request (what SIGHUP does; SIGHUP to the real process is in
 * process.test.ts) picks it up.
 *
 * - applied: the next mail uses the new templates; counted once, logged
 *   naming the files; unchanged files cost no log line;
 * - refused (no {{code}}, not UTF-8, DEFAULT_LOCALE losing a purpose): the
 *   templates in use keep being mailed, the log names TEMPLATES_DIR, the file
 *   and the reason, the refusal is counted once and the gauge reads 0 until
 *   the folder is put right;
 * - a template copied before its sibling files is no refusal: it is applied
 *   once they follow;
 * - a change copied file by file is served only once the folder reads the
 *   same twice, the settle time apart (poll or request alike): never a new
 *   file with the old files it was meant to go with.
 */
import { writeFileSync } from "node:fs";
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { DeliveryState, OtpEmailService, Purpose } from "../../gen/otp/v1/otp_email_pb.js";
import { createRenderer } from "../../src/delivery/render.js";
import { startTemplateReloader } from "../../src/delivery/template-reloader.js";
import { readTemplateDir } from "../../src/delivery/templates.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/telemetry/metrics.js";
import { createProviderClassifier } from "../../src/telemetry/provider-class.js";
import { grpcUnary } from "../support/grpc.js";
import { startObservedService, type ObservedService } from "../support/observed-service.js";

const { sendOtp } = OtpEmailService.method;

type TemplateRead = Awaited<ReturnType<typeof readTemplateDir>>;
const rendererOf = (read: TemplateRead) => createRenderer({ defaultLocale: "en", productName: "Acme", templatesDir: read });

/**
 * A reloader of `dir` driven by hand (no poll: it reads on `reload()` only), with its own metrics, and how many
 * changes it applied or refused; `fakeTimers` fakes the timers after the folder's first read, before the start.
 */
async function handReloader(
  dir: string,
  options: { readonly settleMs: number; readonly fakeTimers?: boolean; readonly build?: (read: TemplateRead) => ReturnType<typeof rendererOf> },
) {
  const metrics = createMetrics({ providers: createProviderClassifier(), processMetrics: false });
  const initial = await readTemplateDir(dir);
  if (options.fakeTimers === true) vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
  const reloader = startTemplateReloader({
    dir,
    initial: { read: initial, renderer: rendererOf(initial) },
    build: options.build ?? rendererOf,
    intervalMs: undefined,
    settleMs: options.settleMs,
    metrics,
    logger: createLogger({ level: "silent" }),
  });
  const reloads = async (result: "applied" | "refused") =>
    (await metrics.registry.getSingleMetric("otp_templates_reloads_total")?.get())?.values.find((v) => v.labels["result"] === result)?.value;
  return { reloader, reloads };
}

/** The three files of a `login` template in Japanese, its words marked with `version`. */
function loginJa(version: string): Record<string, string> {
  return {
    "login.ja.subject.txt": `${version} {{product}} ログインコード: {{code}}\n`,
    "login.ja.txt": `${version} ログインコード: {{code}}\n`,
    "login.ja.html": `<p>${version} ログインコード: <b>{{code}}</b></p>\n`,
  };
}

/** A template folder whose files are replaced the safe way: a new file renamed over the old. */
async function templateFolder(files: Record<string, string | Buffer>) {
  const dir = await mkdtemp(join(tmpdir(), "otp-template-reload-"));
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  return {
    dir,
    async replace(changes: Record<string, string | Buffer>): Promise<void> {
      for (const [name, content] of Object.entries(changes)) {
        await writeFile(join(dir, `.${name}.tmp`), content);
        await rename(join(dir, `.${name}.tmp`), join(dir, name));
      }
    },
    remove: (...names: string[]) => Promise.all(names.map((name) => rm(join(dir, name)))),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** One sample's value from the app's registry (undefined when the series does not exist). */
async function sample(service: ObservedService, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  for (const metric of await service.metrics.registry.getMetricsAsJSON()) {
    if (metric.name !== name) continue;
    for (const value of metric.values) {
      const actual = value.labels as Record<string, string | number>;
      const keys = Object.keys(actual);
      if (keys.length === Object.keys(labels).length && keys.every((key) => String(actual[key]) === labels[key])) return value.value;
    }
  }
  return undefined;
}

const reloads = (service: ObservedService, result: "applied" | "refused") => sample(service, "otp_templates_reloads_total", { result });
const lastReloadSuccessful = (service: ObservedService) => sample(service, "otp_templates_last_reload_successful");

/** Retries `check` until it returns true (every 100 ms, for up to `timeoutMs`). */
async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

let recipients = 0;

/** Sends a login code in `locale` and returns the mail the sink received: its subject, text and HTML. */
async function mailed(service: ObservedService, locale = "ja"): Promise<{ subject: string; text: string; html: string; code: string }> {
  const before = service.sink.messages.length;
  const sent = await grpcUnary(service.grpcClient, sendOtp, { recipient: `templates-${++recipients}@example.com`, purpose: Purpose.LOGIN, locale });
  expect(sent.state).toBe(DeliveryState.ACCEPTED);
  const [mail] = (await service.sink.waitForMessages(before + 1)).slice(before);
  const subject = mail?.parsed.subject ?? "";
  return { subject, text: mail?.parsed.text ?? "", html: String(mail?.parsed.html), code: /(\d{6})$/.exec(subject)?.[1] ?? "" };
}

/** The log lines of the template reloader. */
const templateLines = (service: ObservedService) => service.logs().filter((line) => line["component"] === "templates");

describe("TEMPLATES_DIR, re-read every TEMPLATES_RELOAD_INTERVAL", () => {
  let folder: Awaited<ReturnType<typeof templateFolder>>;
  let service: ObservedService;

  beforeAll(async () => {
    folder = await templateFolder(loginJa("v1"));
    service = await startObservedService({ env: { TEMPLATES_DIR: folder.dir, TEMPLATES_RELOAD_INTERVAL: "1s" }, templatesSettleMs: 200 });
  });

  afterAll(async () => {
    await service.stop();
    await folder.cleanup();
  });

  it("a changed template is mailed after the poll, without a restart: every part of the mail from the new set, counted once, logged naming the files", async () => {
    const first = await mailed(service);
    expect(first.subject).toMatch(/^v1 Acme Login ログインコード: \d{6}$/);
    expect(await reloads(service, "applied")).toBe(0);
    expect(await lastReloadSuccessful(service)).toBe(1);

    await folder.replace(loginJa("v2"));
    await until("the poll to apply the new templates", async () => ((await reloads(service, "applied")) ?? 0) > 0);
    const second = await mailed(service);
    expect(second.subject).toMatch(/^v2 Acme Login ログインコード: \d{6}$/);
    expect(second.text).toBe(`v2 ログインコード: ${second.code}\n`);
    expect(second.html).toContain(`v2 ログインコード: <b>${second.code}</b>`);
    // Other locales and purposes still come from the built-in templates.
    expect((await mailed(service, "en")).subject).toMatch(/^\d{6} is your Acme Login sign-in code$/);

    expect(await reloads(service, "applied")).toBe(1);
    expect(await reloads(service, "refused")).toBe(0);
    const applied = templateLines(service).filter((line) => /reloaded/.test(String(line["msg"])));
    expect(applied).toEqual([
      expect.objectContaining({ level: "info", templates_dir: folder.dir, changed: ["login.ja.html", "login.ja.subject.txt", "login.ja.txt"] }),
    ]);
    // No code in any log line.
    expect(service.logLines.join("\n")).not.toContain(second.code);
  });

  it("unchanged files: the poll does no work worth a log line and counts nothing", async () => {
    const linesBefore = templateLines(service).length;
    await sleep(2500);
    expect(templateLines(service).slice(linesBefore)).toEqual([]);
    expect(await reloads(service, "applied")).toBe(1);
    expect((await mailed(service)).subject).toMatch(/^v2 /);
  });
});

describe("a Kubernetes ConfigMap volume: files are links through `..data`, which is swapped to a new folder", () => {
  let root: string;
  let service: ObservedService;

  /** Writes the files into a new timestamped folder, as the kubelet does. */
  async function writeVersion(name: string, files: Record<string, string>): Promise<void> {
    await mkdir(join(root, name));
    for (const [file, content] of Object.entries(files)) await writeFile(join(root, name, file), content);
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "otp-template-configmap-"));
    await writeVersion("..2026_11_29_10_00_00.1", loginJa("configmap-v1"));
    await symlink("..2026_11_29_10_00_00.1", join(root, "..data"));
    for (const file of Object.keys(loginJa(""))) await symlink(join("..data", file), join(root, file));
    service = await startObservedService({ env: { TEMPLATES_DIR: root, TEMPLATES_RELOAD_INTERVAL: "1s" }, templatesSettleMs: 200 });
  });

  afterAll(async () => {
    await service.stop();
    await rm(root, { recursive: true, force: true });
  });

  it("the swap is picked up by the poll and the old folder's removal does no harm", async () => {
    expect((await mailed(service)).subject).toMatch(/^configmap-v1 /);
    // The kubelet's update: a new folder, a new link renamed over `..data`, the old folder removed.
    await writeVersion("..2026_11_29_10_05_00.2", loginJa("configmap-v2"));
    await symlink("..2026_11_29_10_05_00.2", join(root, "..data_tmp"));
    await rename(join(root, "..data_tmp"), join(root, "..data"));
    await rm(join(root, "..2026_11_29_10_00_00.1"), { recursive: true });

    await until("the poll to apply the swapped folder", async () => ((await reloads(service, "applied")) ?? 0) > 0);
    expect((await mailed(service)).subject).toMatch(/^configmap-v2 /);
    expect(await reloads(service, "applied")).toBe(1);
    expect(await reloads(service, "refused")).toBe(0);
    expect(service.logs().filter((line) => line["level"] === "error")).toEqual([]);
  });
});

describe("refused changes: the templates in use keep being mailed", () => {
  let folder: Awaited<ReturnType<typeof templateFolder>>;
  let service: ObservedService;
  const refusals = () => templateLines(service).filter((line) => line["level"] === "error");

  beforeAll(async () => {
    folder = await templateFolder(loginJa("good"));
    // Only reload requests read the folder here, so that each step is seen exactly once.
    service = await startObservedService({ env: { TEMPLATES_DIR: folder.dir, TEMPLATES_RELOAD_INTERVAL: "off" }, templatesSettleMs: 200 });
  });

  afterAll(async () => {
    await service.stop();
    await folder.cleanup();
  });

  it("a template without {{code}}: refused once it stays so, logged naming TEMPLATES_DIR and the file, counted once, the gauge 0", async () => {
    await folder.replace({ "login.ja.txt": "bad: ログインコードはありません\n" });
    await service.app.reloadTemplates();
    await until("the refusal", () => refusals().length > 0);
    const file = join(folder.dir, "login.ja.txt");
    expect(refusals()).toEqual([
      expect.objectContaining({ templates_dir: folder.dir, changed: ["login.ja.txt"], reason: expect.stringContaining(`TEMPLATES_DIR: ${file}: must contain {{code}}`) as string }),
    ]);
    expect(String(refusals()[0]?.["msg"])).toMatch(/^TEMPLATES_DIR changed but was not applied: TEMPLATES_DIR: .*login\.ja\.txt: must contain \{\{code\}\}/);
    expect(await reloads(service, "refused")).toBe(1);
    expect(await reloads(service, "applied")).toBe(0);
    expect(await lastReloadSuccessful(service)).toBe(0);
    expect((await mailed(service)).subject).toMatch(/^good /);

    // The same broken folder read again: no second report, but the request is answered.
    await service.app.reloadTemplates();
    await sleep(400);
    expect(refusals()).toHaveLength(1);
    expect(await reloads(service, "refused")).toBe(1);
    const still = templateLines(service).filter((line) => /still not applied/.test(String(line["msg"])));
    expect(still).toEqual([expect.objectContaining({ level: "warn", reason: expect.stringContaining("must contain {{code}}") as string })]);
  });

  it("a template that is not UTF-8: refused, naming the file", async () => {
    // "ログイン {{code}}" in Shift_JIS.
    const shiftJis = Buffer.concat([Buffer.from([0x83, 0x8d, 0x83, 0x4f, 0x83, 0x43, 0x83, 0x93]), Buffer.from(" {{code}}\n")]);
    await folder.replace({ "login.ja.txt": shiftJis });
    await service.app.reloadTemplates();
    await until("the refusal", () => refusals().length > 1);
    expect(refusals()[1]).toMatchObject({ reason: expect.stringContaining(`${join(folder.dir, "login.ja.txt")}: is not UTF-8 text`) as string });
    expect(await reloads(service, "refused")).toBe(2);
    expect(await lastReloadSuccessful(service)).toBe(0);
    expect((await mailed(service)).subject).toMatch(/^good /);
  });

  it("the folder put right: the request is answered at once, the folder applied once it held still for the settle, the gauge back to 1", async () => {
    await folder.replace(loginJa("fixed"));
    await service.app.reloadTemplates();
    expect(templateLines(service).at(-1)).toMatchObject({ level: "info", msg: "TEMPLATES_DIR changed: reading it again within 0.2 s before applying it" });
    await until("the settle's re-read to apply it", async () => (await reloads(service, "applied")) === 1);
    expect(await lastReloadSuccessful(service)).toBe(1);
    expect((await mailed(service)).subject).toMatch(/^fixed /);
  });

  it("a reload request with nothing changed is answered: unchanged", async () => {
    await service.app.reloadTemplates();
    expect(templateLines(service).at(-1)).toMatchObject({ level: "info", msg: `TEMPLATES_DIR ${folder.dir} unchanged: mail still goes out with the templates in use` });
  });
});

describe("DEFAULT_LOCALE must still have every purpose after a reload, as at start-up", () => {
  it("a change that takes a purpose away from DEFAULT_LOCALE is refused, naming DEFAULT_LOCALE; its mail goes on", async () => {
    const everyPurpose = Object.fromEntries(
      ["login", "signup", "password_reset"].flatMap((purpose) => [
        [`${purpose}.ja.subject.txt`, `${purpose} {{code}}`],
        [`${purpose}.ja.txt`, `${purpose} {{code}}`],
        [`${purpose}.ja.html`, `<p>${purpose} {{code}}</p>`],
      ]),
    );
    const folder = await templateFolder(everyPurpose);
    const service = await startObservedService({
      env: { TEMPLATES_DIR: folder.dir, TEMPLATES_RELOAD_INTERVAL: "off", DEFAULT_LOCALE: "ja" },
      templatesSettleMs: 200,
    });
    try {
      await folder.remove("signup.ja.subject.txt", "signup.ja.txt", "signup.ja.html");
      await service.app.reloadTemplates();
      await until("the refusal", () => templateLines(service).some((line) => line["level"] === "error"));
      expect(templateLines(service).find((line) => line["level"] === "error")).toMatchObject({
        reason: expect.stringMatching(/^DEFAULT_LOCALE=ja: no signup template for the default locale "ja"/) as string,
      });
      expect(await reloads(service, "refused")).toBe(1);
      expect((await mailed(service, "")).subject).toMatch(/^login \d{6}$/);
    } finally {
      await service.stop();
      await folder.cleanup();
    }
  });
});

describe("a template copied before its sibling files", () => {
  it("is no refusal: nothing is applied, logged as an error or counted until the set is whole, then it is applied", async () => {
    const folder = await templateFolder(loginJa("whole"));
    const service = await startObservedService({
      env: { TEMPLATES_DIR: folder.dir, TEMPLATES_RELOAD_INTERVAL: "off" },
      // Far longer than the step from the first file to the rest: the half-copied set is only ever "not yet".
      templatesSettleMs: 1500,
    });
    try {
      const french = { "login.fr.subject.txt": "Code {{code}}", "login.fr.txt": "Votre code : {{code}}", "login.fr.html": "<p>{{code}}</p>" };
      await folder.replace({ "login.fr.subject.txt": french["login.fr.subject.txt"] });
      await service.app.reloadTemplates();
      expect(await reloads(service, "refused")).toBe(0);
      expect(await reloads(service, "applied")).toBe(0);
      expect((await mailed(service, "fr")).subject).toMatch(/is your Acme Login sign-in code$/);

      await folder.replace(french);
      await service.app.reloadTemplates();
      await until("the whole set to be applied once it held still", async () => (await reloads(service, "applied")) === 1);
      expect(await reloads(service, "refused")).toBe(0);
      expect((await mailed(service, "fr")).subject).toMatch(/^Code \d{6}$/);
      // As at start-up: a locale with some purposes only is allowed, and named.
      expect(service.logs().filter((line) => line["locale"] === "fr")).toEqual([
        expect.objectContaining({ level: "warn", missing_purposes: ["signup", "password_reset"], default_locale: "en" }),
      ]);
      expect(service.logs().filter((line) => line["level"] === "error")).toEqual([]);
    } finally {
      await service.stop();
      await folder.cleanup();
    }
  });
});

describe("a change copied file by file, each file valid alone", () => {
  // login.ja's subject and text change together; the subject lands first. Alone it passes every check, and served,
  // it would mail the new subject over the old text.
  const half = { "login.ja.subject.txt": "v2 {{product}} ログインコード: {{code}}\n" };
  const rest = { "login.ja.txt": "v2 ログインコード: {{code}}\n" };

  it("a poll that reads the first file serves the old set until the second lands and the folder holds still for the settle", async () => {
    const folder = await templateFolder(loginJa("v1"));
    const service = await startObservedService({ env: { TEMPLATES_DIR: folder.dir, TEMPLATES_RELOAD_INTERVAL: "1s" }, templatesSettleMs: 3000 });
    /** The reloader's lines about a change it read: waiting to settle, or (as it was) applied at once, so that doing so fails below. */
    const seen = () => templateLines(service).filter((line) => /^TEMPLATES_DIR (changed|reloaded)/.test(String(line["msg"])));
    try {
      await folder.replace(half);
      await until("a poll to read the first file", () => seen().length > 0);
      let mail = await mailed(service);
      expect(mail.subject).toMatch(/^v1 /);
      expect(mail.text).toMatch(/^v1 /);

      await folder.replace(rest);
      await until("a poll to read the second file", () => seen().length > 1);
      mail = await mailed(service);
      expect(mail.subject).toMatch(/^v1 /);
      expect(await reloads(service, "applied")).toBe(0);

      await until("the settled folder to be applied", async () => ((await reloads(service, "applied")) ?? 0) > 0);
      mail = await mailed(service);
      expect(mail.subject).toMatch(/^v2 /);
      expect(mail.text).toBe(`v2 ログインコード: ${mail.code}\n`);
      // The half-copied set was never applied: one change, counted once, naming both files.
      expect(await reloads(service, "applied")).toBe(1);
      expect(templateLines(service).filter((line) => /reloaded/.test(String(line["msg"])))).toEqual([
        expect.objectContaining({ changed: ["login.ja.subject.txt", "login.ja.txt"] }),
      ]);
    } finally {
      await service.stop();
      await folder.cleanup();
    }
  });

  it("a reload request (SIGHUP) that reads the first file serves the old set too, and the whole change only once it held still for the settle", async () => {
    const folder = await templateFolder(loginJa("v1"));
    const { reloader, reloads } = await handReloader(folder.dir, { settleMs: 1000, fakeTimers: true });
    const render = () => reloader.renderer.render({ purpose: "login", locale: "ja", code: "482913", ttlMs: 600_000 });
    const applied = () => reloads("applied");
    try {
      await folder.replace(half);
      await reloader.reload();
      expect(render().subject).toBe("v1 Acme ログインコード: 482913");
      expect(render().text).toBe("v1 ログインコード: 482913\n");

      await vi.advanceTimersByTimeAsync(500);
      await folder.replace(rest);
      await reloader.reload();
      expect(render().subject).toBe("v1 Acme ログインコード: 482913");
      // Past the end of the first file's settle: the whole change waits its own full settle, from its first read.
      await vi.advanceTimersByTimeAsync(999);
      await reloader.reload();
      expect(render().subject).toBe("v1 Acme ログインコード: 482913");
      expect(await applied()).toBe(0);

      await vi.advanceTimersByTimeAsync(1);
      await reloader.reload();
      expect(render().subject).toBe("v2 Acme ログインコード: 482913");
      expect(render().text).toBe("v2 ログインコード: 482913\n");
      expect(await applied()).toBe(1);
    } finally {
      reloader.stop();
      vi.useRealTimers();
      await folder.cleanup();
    }
  });
});

describe("a folder that changes while it is read", () => {
  it("is not served from the read the change overtook: it is read again once settled, and only the settled folder is applied", async () => {
    const folder = await templateFolder(loginJa("one"));
    let checks = 0;
    const { reloader, reloads } = await handReloader(folder.dir, {
      settleMs: 200,
      // The start-up check, with a writer that changes a file just after the folder was read (once).
      build: (read) => {
        if (++checks === 1) writeFileSync(join(folder.dir, "login.ja.txt"), "three {{code}}\n");
        return rendererOf(read);
      },
    });
    const text = () => reloader.renderer.render({ purpose: "login", locale: "ja", code: "482913", ttlMs: 600_000 }).text;
    const applied = () => reloads("applied");
    try {
      await folder.replace(loginJa("two"));
      await reloader.reload();
      // The set read first (all "two") passed its checks, but the folder no longer holds it: not applied.
      expect(text()).toBe("one ログインコード: 482913\n");
      expect(await applied()).toBe(0);
      await until("the settled folder to be applied", async () => (await applied()) === 1);
      expect(text()).toBe("three 482913\n");
      expect(checks).toBe(2);
    } finally {
      reloader.stop();
      await folder.cleanup();
    }
  });
});

describe("a settle overtaken by a newer change", () => {
  it("does not refuse the newer change at the older one's re-read: the newer change waits its own full settle", async () => {
    const folder = await templateFolder(loginJa("one"));
    const { reloader, reloads } = await handReloader(folder.dir, { settleMs: 1000, fakeTimers: true });
    const refused = () => reloads("refused");
    try {
      await folder.replace({ "login.ja.txt": "two, no code\n" });
      await reloader.reload();
      await vi.advanceTimersByTimeAsync(999);
      // Another change, read by a request queued just before the first change's settle ends and queues its re-read.
      await folder.replace({ "login.ja.txt": "three, no code\n" });
      const request = reloader.reload();
      vi.advanceTimersByTime(1);
      await request;
      await reloader.reload();
      // The re-read found "three", seen for the first time a moment ago: it is not refused yet.
      expect(await refused()).toBe(0);

      await vi.advanceTimersByTimeAsync(1000);
      await reloader.reload();
      expect(await refused()).toBe(1);
    } finally {
      reloader.stop();
      vi.useRealTimers();
      await folder.cleanup();
    }
  });
});

describe("without TEMPLATES_DIR", () => {
  it("there is no reload count, nothing reads as refused, and a reload request says there is nothing to read again", async () => {
    const service = await startObservedService({ env: {} });
    try {
      const text = await service.metrics.render("text");
      expect(text).toContain("# TYPE otp_templates_reloads_total counter");
      expect(text).not.toMatch(/^otp_templates_reloads_total\{/m);
      expect(text).toMatch(/^otp_templates_last_reload_successful 1$/m);
      await service.app.reloadTemplates();
      expect(templateLines(service).at(-1)?.["msg"]).toBe("no template folder to read again: TEMPLATES_DIR is not set (the built-in templates are in use)");
    } finally {
      await service.stop();
    }
  });
});
