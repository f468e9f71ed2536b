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
 * link swapped between two reads) is never served: each file of a change
 * may pass its checks alone (a new subject copied before its new text), so a
 * changed folder is acted on only once it reads the same twice, `settleMs`
 * apart, as the token file is: applied if it passes the checks, refused if
 * not. A read on SIGHUP is such a first read too; the settle's re-read acts.
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
  /** How long a changed folder must read the same before it is applied or refused (default 2 s). */
  readonly settleMs?: number | undefined;
  readonly metrics: Pick<Metrics, "templatesReloads" | "templatesLastReloadSuccessful">;
  readonly logger: Logger;
}

export interface TemplateReloader {
  /** Renders with the set in use when called: each render one whole set. */
  readonly renderer: Renderer;
  /**
   * Reads the folder now (what SIGHUP does), answering in the log whatever
   * comes of it. Resolves once a change, if any, is waiting to settle (a
   * change is applied or refused only by the settle's re-read); never rejects.
   */
  reload(): Promise<void>;
  /** Stops the poll and any pending re-read. */
  stop(): void;
}

const defaultSettleMs = 2000;

/** One read of the folder: what it held, or why it could not be listed. */
type FolderRead = { readonly read: TemplateDirRead } | { readonly error: Error };

/** What the start-up checks made of a folder: its renderer, or why not. */
type Outcome = { readonly renderer: Renderer } | { readonly reason: string };

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
  /** The last changed folder checked, so that its settle's re-read, finding the same files, need not check them again. */
  let checked: { digest: string; outcome: Outcome } | undefined;

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
  /** A changed folder read once, read again after `settleMs` before it is applied or refused. */
  const settler = createSettler({ settleMs, loop, reread: (settle) => check(settle, false) });

  /**
   * Reads the folder; `confirming`: the settle whose re-read this is, `settleMs` after the folder changed (it
   * confirms only if no other change replaced it meanwhile); `requested`: a reload request (SIGHUP), answered
   * in the log whatever the outcome.
   */
  async function check(confirming: Settle | undefined, requested: boolean): Promise<void> {
    const folder = await readFolder(dir);
    const files = fileDigests(folder);
    const digest = digestOf(files);
    if (digest === servedDigest) {
      settler.stop();
      checked = undefined;
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
      settler.stop();
      checked = undefined;
      if (requested && refusal !== undefined) {
        logger.warn(
          { templates_dir: dir, changed: refusal.changed, reason: refusal.reason },
          `TEMPLATES_DIR still not applied: ${refusal.reason}. Mail still goes out with the templates in use`,
        );
      }
      return;
    }

    const changed = changedNames(servedFiles, files);
    if (checked?.digest !== digest) checked = { digest, outcome: checkFolder(folder) };
    const { outcome } = checked;

    if (!settler.confirms(confirming, digest)) {
      // Files copied one by one each pass the checks alone (a new subject before its new text), and a template
      // copied before its siblings fails them: either way, wait for the folder to hold still.
      logger[requested ? "info" : "debug"](
        { templates_dir: dir, changed, settle_ms: settleMs, ...("reason" in outcome ? { reason: outcome.reason } : {}) },
        "reason" in outcome
          ? `TEMPLATES_DIR changed but does not pass its checks (yet?): reading it again within ${settleMs / 1000} s before refusing it`
          : `TEMPLATES_DIR changed: reading it again within ${settleMs / 1000} s before applying it`,
      );
      if (!settler.settling(digest)) settler.settle(digest);
      return;
    }
    settler.stop();
    checked = undefined;

    if ("renderer" in outcome) {
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

  /** The start-up checks of the folder as read. */
  function checkFolder(folder: FolderRead): Outcome {
    if ("error" in folder) return { reason: `TEMPLATES_DIR: ${folder.error.message}` };
    try {
      return { renderer: options.build(folder.read) };
    } catch (error) {
      return { reason: error instanceof Error ? error.message : String(error) };
    }
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
