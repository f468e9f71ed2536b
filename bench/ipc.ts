/**
 * IPC between the orchestrator and its child processes: typed send, and a
 * wait for one kind of event that fails when the child exits or time runs out.
 */
import type { ChildProcess } from "node:child_process";

/** In a child: sends an event to the parent (no-op without an IPC channel). */
export function sendToParent(event: object): void {
  process.send?.(event);
}

/** In a child: handles the parent's commands; the child exits when the parent goes away. */
export function onParentCommand<C>(handler: (command: C) => void): void {
  process.on("message", (message) => handler(message as C));
  process.on("disconnect", () => process.exit(0));
}

/**
 * Resolves with the child's next event of `type`; other events go to
 * `onOther`. Rejects when the child exits first or after `timeoutMs`.
 */
export function waitForEvent<E extends { readonly type: string }, K extends E["type"]>(
  child: ChildProcess,
  type: K,
  timeoutMs: number,
  onOther?: (event: E) => void,
): Promise<Extract<E, { type: K }>> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      child.off("message", onMessage);
      child.off("exit", onExit);
    };
    const onMessage = (message: unknown): void => {
      const event = message as E;
      if (event.type === type) {
        cleanup();
        resolve(event as Extract<E, { type: K }>);
      } else {
        onOther?.(event);
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      cleanup();
      reject(new Error(`child ${child.pid} exited (${signal ?? code}) while waiting for "${type}"`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`child ${child.pid}: no "${type}" within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("message", onMessage);
    child.once("exit", onExit);
  });
}
