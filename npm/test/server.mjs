// A real `trustfold-server` for the tests that need one: the binary
// ($TRUSTFOLD_SERVER_BIN, else built here with `cargo build`; mk/wasm.mk builds it
// before the tests), a free loopback port, and the server as a child process on a temp
// SQLite file.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { rootDir } from "./support.mjs";

/** The admin token the test servers run with. */
export const ADMIN = "network-test-admin";
/** The real-estate earnest-money policy of examples/policies. */
export const POLICY = readFileSync(join(rootDir, "examples", "policies", "earnest-money.json"), "utf8");

export function serverBinary() {
  if (process.env.TRUSTFOLD_SERVER_BIN) return process.env.TRUSTFOLD_SERVER_BIN;
  const r = spawnSync(
    process.env.CARGO ?? "cargo",
    ["build", "-p", "trustfold-server", "--bin", "trustfold-server", "--message-format=json-render-diagnostics"],
    { cwd: rootDir, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 << 20 },
  );
  assert.equal(r.status, 0, "cargo build -p trustfold-server failed");
  for (const line of r.stdout.split("\n")) {
    if (!line.startsWith("{")) continue;
    const m = JSON.parse(line);
    if (m.reason === "compiler-artifact" && m.target?.name === "trustfold-server" && m.executable) return m.executable;
  }
  throw new Error("cargo built no trustfold-server executable");
}

export async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** The real server as a child process; `restart()` keeps its port and database. */
export class Server {
  constructor(bin, dir, port, corsOrigin) {
    Object.assign(this, { bin, dir, port, corsOrigin, log: "" });
    this.base = `http://127.0.0.1:${port}`;
  }

  async start() {
    this.proc = spawn(this.bin, [
      "--database-url", join(this.dir, "trustfold.db"),
      "--listen", `127.0.0.1:${this.port}`,
      "--cors-origin", this.corsOrigin,
      "--poll-ms", "200",
      "--heartbeat-seconds", "1",
    ], { env: { ...process.env, TRUSTFOLD_ADMIN_TOKEN: ADMIN, RUST_LOG: "warn" }, stdio: ["ignore", "ignore", "pipe"] });
    this.proc.stderr.on("data", (d) => { this.log += d; });
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.exited = exited;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 100))]);
      if (code !== undefined) throw new Error(`trustfold-server exited (${code}):\n${this.log}`);
      try {
        if ((await fetch(`${this.base}/healthz`)).ok) return;
      } catch {}
      if (Date.now() > deadline) throw new Error(`trustfold-server did not come up:\n${this.log}`);
    }
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    const killer = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(killer);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async call(method, path, auth, body, headers = {}) {
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: {
        ...(auth ? { authorization: `Bearer ${auth}` } : {}),
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, text, body: text ? JSON.parse(text) : undefined };
  }

  async ok(method, path, auth, body) {
    const r = await this.call(method, path, auth, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.text}`);
    return r.body;
  }

  /**
   * Opens a payment of `amount` USD under `policy` (default: the earnest-money policy)
   * with the tenant's API key, `agent` as listing agent, and invites each
   * `[party, role, name?]`; the payment id.
   */
  async openPayment(key, { agent, amount = "5000.00", description = "12 Elm St, earnest money", invite = [], policy = "earnest-money" }) {
    const payment = (await this.ok("POST", "/v1/payments", key, {
      policy,
      amount: { amount, currency: "USD" },
      description,
      initiator: { party: agent, roles: ["listing_agent"], name: "Lee (listing agent)" },
    })).payment_id;
    for (const [party, role, name = role] of invite) {
      await this.command(key, payment, agent, "listing_agent", { type: "Invite", party, roles: [role], name });
    }
    return payment;
  }

  /** A command sent with the tenant's API key as `party` in `role`. */
  command(key, payment, party, role, command) {
    return this.ok("POST", `/v1/payments/${payment}/commands`, key, { command, actor: { party, role } });
  }
}
