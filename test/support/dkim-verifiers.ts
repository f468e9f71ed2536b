/**
 * Two independent DKIM verifiers, fed the exact bytes a server received:
 * mailauth (Node) and Debian's python3-dkim (dkimpy, run with
 * /usr/bin/python3). Each gets the public key through its own DNS hook, so
 * no real DNS is involved.
 *
 * A missing python3-dkim fails the test with a how-to, never skips it.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dkimVerify } from "mailauth";

export interface DkimKeyRecord {
  /** `<selector>._domainkey.<domain>`. */
  readonly name: string;
  /** The TXT value: `v=DKIM1; k=rsa; p=...`. */
  readonly txt: string;
}

export interface MailauthVerdict {
  readonly result: string;
  readonly signingDomain: string;
  readonly comment: string;
}

/** mailauth's verdict on the first signature. */
export async function verifyWithMailauth(raw: Buffer, key: DkimKeyRecord): Promise<MailauthVerdict> {
  const outcome = await dkimVerify(raw, {
    resolver: (name: string, type: string) =>
      name.toLowerCase() === key.name && type === "TXT"
        ? Promise.resolve([[key.txt]])
        : Promise.reject(Object.assign(new Error(`no ${type} record for ${name}`), { code: "ENOTFOUND" })),
  });
  const first = outcome.results[0];
  return {
    result: first?.status.result ?? "none",
    signingDomain: first?.signingDomain ?? "",
    comment: first?.status.comment ?? "",
  };
}

const python = "/usr/bin/python3";
const missingDkimpy =
  "python3-dkim (dkimpy) is missing under /usr/bin/python3. Install it: `apt-get install -y python3-dkim` " +
  "(.ci/run does this when absent). The DKIM test needs a second, independent verifier.";

// dkimpy asks `dnsfunc` for the selector record; any other name has no TXT.
const verifierScript = `
import sys, dkim
name, txt = sys.argv[1].encode(), sys.argv[2].encode()
def dnsfunc(query, timeout=5):
    return txt if query.rstrip(b".").lower() == name else None
sys.exit(0 if dkim.verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc) else 1)
`;

/** True when dkimpy says the signature verifies; throws with a how-to when it is not installed. */
export async function verifyWithDkimpy(raw: Buffer, key: DkimKeyRecord): Promise<boolean> {
  if (!existsSync(python)) throw new Error(missingDkimpy);
  const child = spawn(python, ["-c", verifierScript, key.name, key.txt], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString("utf8");
  });
  child.stdin.end(raw);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", resolve);
  });
  if (/No module named '?dkim'?/.test(stderr)) throw new Error(missingDkimpy);
  if (code !== 0 && code !== 1) throw new Error(`dkimpy verifier failed (exit ${code}): ${stderr}`);
  return code === 0;
}
