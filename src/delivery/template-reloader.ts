/**
 * TEMPLATES_DIR changed on disk (a Kubernetes ConfigMap updated in place, a
 * deploy that copies new files) is mailed without a restart.
 *
 * The folder is read again every TEMPLATES_RELOAD_INTERVAL and on SIGHUP
 * (`reload`). When what it holds changed, the whole folder is checked by the
 * very function that checks it at start-up, and then:
 * - applied: the next render uses the new set. The renderer in use is one
 *   object, swapped whole, so a message is rendered from one set, never from
 *   some old and some new files;
 * - refused: the set in use stays, and an error names TEMPLATES_DIR, the file
 *   and the reason. The same files are reported once, however often they are
 *   read again.
 * Each outcome is counted in otp_templates_reloads_total, and
 * otp_templates_last_reload_successful is 0 while refused files sit in the
 * folder (a restart would fail on them).
 *
 * A folder caught mid-change (files copied one by one, a ConfigMap's `..data`
 * link swapped between two reads) is never served: a set that passes its
 * checks is applied only when a second read finds the same files, and one
 * that fails them is read again after `settleMs` and refused only when it
 * still holds the same thing.
 */
import { createHash } from "node:crypto";
import type { Logger } from "../logger.js";
import { createSettler, startReloadLoop, type Settle } from "../reload-loop.js";
import type { Metrics } from "../telemetry/metrics.js";
import type { Renderer } from "./render.js";
import { readTemplateDir, type TemplateDirRead } from "./templates.js";

export interface TemplateReloaderOptions {
  /** TEMPLATES_DIR. */
  readonly dir: string;
  /** The folder as read at start-up, and the renderer made from it. */
  readonly initial: { readonly read: TemplateDirRead; readonly renderer: Renderer };
  /**
   * Makes a renderer from the folder as read, checked exactly as at start-up;
   * throws an Error whose message names the variable, the file and the reason.
   */
  build(read: TemplateDirRead): Renderer;
  /** Told each set applied after start-up (to say, as at start-up, which locales lack some purposes). */
  readonly onApplied?: ((renderer: Renderer) => void) | undefined;
  /** TEMPLATES_RELOAD_INTERVAL: how often the folder is read; undefined: only on `reload` (SIGHUP). */
  readonly intervalMs: number | undefined;
  /** How long a folder that fails its checks, or is still changing, gets to settle (default 2 s). */
  readonly settleMs?: number | undefined;
  readonly metrics: Pick<Metrics, "templatesReloads" | "templatesLastReloadSuccessful">;
  readonly logger: Logger;
}

export interface TemplateReloader {
  /** Renders with the set in use when called: each render one whole set. */
  readonly renderer: Renderer;
  /**
   * Reads the folder now (what SIGHUP does), answering in the log whatever
   * comes of it. Resolves once a change, if any, is applied, refused or
   * waiting to settle; never rejects.
   */
  reload(): Promise<void>;
  /** Stops the poll and any pending re-read. */
  stop(): void;
}

const defaultSettleMs = 2000;

/** One read of the folder: what it held, or why it could not be listed. */
type FolderRead = { readonly read: TemplateDirRead } | { readonly error: Error };

/** Starts watching TEMPLATES_DIR (logs how often). */
export function startTemplateReloader(options: TemplateReloaderOptions): TemplateReloader {
  const { dir, metrics, intervalMs } = options;
  const logger = options.logger.child({ component: "templates" });
  const settleMs = options.settleMs ?? defaultSettleMs;

  let current = options.initial.renderer;
  let servedFiles = fileDigests({ read: options.initial.read });
  let servedDigest = digestOf(servedFiles);
  let refusedDigest: string | undefined;
  /** Why the files at `refusedDigest` were refused, to answer a reload request while they stay. */
  let refusal: { changed: string[]; reason: string } | undefined;

  metrics.templatesReloads.labels("applied").inc(0);
  metrics.templatesReloads.labels("refused").inc(0);
  metrics.templatesLastReloadSuccessful.set(1);
  logger.info(
    { templates_dir: dir, interval_ms: intervalMs ?? null },
    intervalMs === undefined
      ? "TEMPLATES_DIR is re-read on SIGHUP only (TEMPLATES_RELOAD_INTERVAL=off)"
      : `TEMPLATES_DIR is re-read every ${intervalMs / 1000} s and on SIGHUP: changed templates are mailed without a restart`,
  );

  const loop = startReloadLoop({
    intervalMs,
    poll: () => check(undefined, false),
    onError: (error) => logger.error({ err: error, templates_dir: dir }, "reading TEMPLATES_DIR failed unexpectedly"),
  });
  /** A folder that failed its checks, or changed between two reads, read again after `settleMs`. */
  const settler = createSettler({ settleMs, loop, reread: (settle) => check(settle, false) });

  /**
   * Reads the folder; `confirming`: the settle whose re-read this is, `settleMs` after the folder failed its checks
   * or changed under a read (it confirms only if no other change replaced it meanwhile);
   * `requested`: a reload request (SIGHUP), answered in the log whatever the outcome.
   */
  async function check(confirming: Settle | undefined, requested: boolean): Promise<void> {
    const folder = await readFolder(dir);
    const files = fileDigests(folder);
    const digest = digestOf(files);
    if (digest === servedDigest) {
      settler.stop();
      if (refusedDigest !== undefined) {
        refusedDigest = undefined;
        metrics.templatesLastReloadSuccessful.set(1);
        logger.info({ templates_dir: dir }, "TEMPLATES_DIR holds the templates in use again");
      } else if (requested) {
        logger.info({ templates_dir: dir }, `TEMPLATES_DIR ${dir} unchanged: mail still goes out with the templates in use`);
      }
      return;
    }
    if (digest === refusedDigest) {
      if (requested && refusal !== undefined) {
        logger.warn(
          { templates_dir: dir, changed: refusal.changed, reason: refusal.reason },
          `TEMPLATES_DIR still not applied: ${refusal.reason}. Mail still goes out with the templates in use`,
        );
      }
      return;
    }

    const changed = changedNames(servedFiles, files);
    let outcome: { renderer: Renderer } | { reason: string };
    if ("error" in folder) {
      outcome = { reason: `TEMPLATES_DIR: ${folder.error.message}` };
    } else {
      try {
        outcome = { renderer: options.build(folder.read) };
      } catch (error) {
        outcome = { reason: error instanceof Error ? error.message : String(error) };
      }
    }

    if ("renderer" in outcome) {
      // The set was read file by file: a folder being written, or a ConfigMap whose `..data` moved between two
      // files, could pass its checks half old, half new. Served only once a second read finds the same files.
      if (digestOf(fileDigests(await readFolder(dir))) !== digest) {
        logger[requested ? "info" : "debug"](
          { templates_dir: dir, settle_ms: settleMs },
          "TEMPLATES_DIR changed while it was read: reading it again before applying",
        );
        settler.settle(digest);
        return;
      }
      settler.stop();
      current = outcome.renderer;
      servedFiles = files;
      servedDigest = digest;
      refusedDigest = undefined;
      metrics.templatesReloads.inc({ result: "applied" });
      metrics.templatesLastReloadSuccessful.set(1);
      logger.info(
        { templates_dir: dir, changed },
        `TEMPLATES_DIR reloaded (${changed.join(", ")}): the next mail uses the new templates`,
      );
      options.onApplied?.(current);
      return;
    }

    if (!settler.confirms(confirming, digest)) {
      // Perhaps a template copied before its sibling files: look again before calling it broken.
      logger[requested ? "info" : "debug"](
        { templates_dir: dir, settle_ms: settleMs },
        "TEMPLATES_DIR changed but does not pass its checks (yet?): reading it again before refusing",
      );
      if (!settler.settling(digest)) settler.settle(digest);
      return;
    }
    settler.stop();
    refusedDigest = digest;
    refusal = { changed, reason: outcome.reason };
    metrics.templatesReloads.inc({ result: "refused" });
    metrics.templatesLastReloadSuccessful.set(0);
    logger.error(
      { templates_dir: dir, changed, reason: outcome.reason },
      `TEMPLATES_DIR changed but was not applied: ${outcome.reason}. ` +
        "Mail still goes out with the templates in use (the service would not start with these files either)",
    );
  }

  return {
    renderer: {
      render: (request) => current.render(request),
      get incompleteLocales() {
        return current.incompleteLocales;
      },
    },
    reload() {
      return loop.enqueue(() => check(undefined, true));
    },
    stop() {
      loop.stop();
      settler.stop();
    },
  };
}

async function readFolder(dir: string): Promise<FolderRead> {
  try {
    return { read: await readTemplateDir(dir) };
  } catch (error) {
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }
}

/** Each file's digest by name (a file that cannot be read: its error); the folder's error under "". */
function fileDigests(folder: FolderRead): ReadonlyMap<string, string> {
  if ("error" in folder) return new Map([["", `!${folder.error.message}`]]);
  return new Map(
    folder.read.files.map((file) => [file.name, "error" in file ? `!${file.error.message}` : createHash("sha256").update(file.bytes).digest("hex")]),
  );
}

/** A digest of the whole folder: the same files give the same digest, whatever the time of reading. */
function digestOf(files: ReadonlyMap<string, string>): string {
  const hash = createHash("sha256");
  for (const [name, digest] of files) hash.update(`${name}\0${digest}\0`);
  return hash.digest("hex");
}

/** The files added, changed or removed, sorted (none when the folder could not be listed: the reason says so). */
function changedNames(before: ReadonlyMap<string, string>, after: ReadonlyMap<string, string>): string[] {
  if (after.has("")) return [];
  const names = new Set([...before.keys(), ...after.keys()]);
  return [...names].filter((name) => before.get(name) !== after.get(name)).sort();
}
