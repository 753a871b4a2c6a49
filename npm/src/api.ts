/**
 * The typed API over the wasm bindings, shared by the Node and browser entry points.
 * Every function throws a {@link TrustfoldError} (`code`, `message`, `seq?`, `field?`)
 * on failure, with the same code and message as the Rust core.
 */
import type * as Raw from "../pkg/trustfold_api.js";
import { beforeLive, isReady, raw } from "./module.js";
import type {
  Actor, Command, CommandContext, CommandKind, CommandResult, EventEnvelope, PaymentState,
  PaymentView, PolicyDocument,
} from "./types.js";

export type { HistoryInput, VerifyResult, PolicySummary, ClientOptions } from "../pkg/trustfold_api.js";
import type { HistoryInput, VerifyResult, PolicySummary, ClientOptions } from "../pkg/trustfold_api.js";

/** The error every trustfold function throws. */
export interface TrustfoldError extends Error {
  name: "TrustfoldError";
  /** Stable machine-readable code, shared with the Rust API and the HTTP API. */
  code: string;
  /** The offending sequence number, for history errors. */
  seq?: number;
  /** The offending field (a JSON path), for policy errors. */
  field?: string;
  /** HTTP status, for errors from the server. */
  status?: number;
  /** The payment's current version, for a `version_conflict` (409) from the server. */
  currentVersion?: number;
  /**
   * For an error passed to a live feed's `onError`: `true` when the feed goes on (it
   * reconnects with backoff: no answer, a 5xx, 408 or 429), `false` when it stopped.
   */
  retrying?: boolean;
}

/** True when `e` is an error thrown by trustfold. */
export function isTrustfoldError(e: unknown): e is TrustfoldError {
  return e instanceof Error && e.name === "TrustfoldError" && typeof (e as { code?: unknown }).code === "string";
}

export { isReady } from "./module.js";

function need(): void {
  if (!isReady()) {
    const err = new Error(
      "trustfold: the WebAssembly module is not initialised yet: `await init()` before calling trustfold functions (in Node the module loads on import)",
    ) as TrustfoldError;
    err.name = "TrustfoldError";
    err.code = "not_initialized";
    throw err;
  }
}

function failure(code: string, message: string): TrustfoldError {
  const err = new Error(message) as TrustfoldError;
  err.name = "TrustfoldError";
  err.code = code;
  return err;
}

function invalid(message: string): TrustfoldError {
  return failure("invalid_input", message);
}

function describe(v: unknown): string {
  try {
    return v === null ? "null" : Array.isArray(v) ? "an array" : typeof v;
  } catch {
    return typeof v; // a revoked Proxy
  }
}

// Arguments are checked before they reach the wasm glue: it passes a non-string to
// Rust as if it were one (a trap, not an error) and coerces numbers silently.
function str(v: unknown, name: string): string {
  if (typeof v !== "string") throw invalid(`${name} must be a string, got ${describe(v)}`);
  return v;
}

function optStr(v: unknown, name: string): string | undefined {
  return v === undefined ? undefined : str(v, name);
}

/**
 * Runs an argument's checks and copy. Whatever the caller's value throws meanwhile (a
 * revoked Proxy, a throwing getter or iterator) is refused as `invalid_input` here: an
 * exception that reached the module from inside it would unwind its frames without
 * giving their stack back, and enough of them leave the module unusable.
 */
function reading<T>(name: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (isTrustfoldError(e)) throw e;
    throw invalid(`${name} could not be read: ${e instanceof Error ? e.message : String(e)}`.slice(0, 200));
  }
}

// The built-in accessors of typed arrays, which a subclass cannot override (its own
// `length` or `byteLength` could lie, or throw from inside the module's copy).
const typedArray = Object.getPrototypeOf(Uint8Array.prototype) as object;
const intrinsic = (p: string) =>
  (Object.getOwnPropertyDescriptor(typedArray, p)?.get ?? (() => undefined)) as (this: unknown) => unknown;
const bufferOf = intrinsic("buffer");
const byteOffsetOf = intrinsic("byteOffset");
const byteLengthOf = intrinsic("byteLength");

/** The most bytes of history passed at once (1 GiB; the module's memory is 32-bit). */
const HISTORY_MAX = 1 << 30;

/** A buffer that was transferred away. */
function isDetached(b: ArrayBufferLike & { detached?: boolean }): boolean {
  if (typeof b.detached === "boolean") return b.detached;
  try {
    b.slice(0, 0); // engines without `detached` (Node 20) throw here for a detached one
    return false;
  } catch {
    return true;
  }
}

function historyInput(v: unknown): HistoryInput {
  return reading("history", () => {
    if (typeof v === "string") return v;
    if (v instanceof Uint8Array) {
      const buffer = bufferOf.call(v) as ArrayBufferLike;
      const length = byteLengthOf.call(v) as number;
      if (length === 0 && isDetached(buffer)) {
        throw invalid("history's Uint8Array has a detached buffer (transferred away)");
      }
      if (length > HISTORY_MAX) {
        throw invalid(
          `history is ${length} bytes; at most ${HISTORY_MAX} (1 GiB) go through at once: verify a larger export with the trustfold CLI, which streams it`,
        );
      }
      // A plain view of the same bytes: the module reads nothing of the caller's object.
      return new Uint8Array(buffer, byteOffsetOf.call(v) as number, length);
    }
    throw invalid(`history must be a JSON string or a Uint8Array of its bytes, got ${describe(v)}`);
  });
}

function num(v: unknown, name: string): number {
  if (typeof v !== "number") throw invalid(`${name} must be a number, got ${describe(v)}`);
  return v;
}

/** The items of the caller's iterable; one that throws (a Proxy, a getter) is refused. */
function spread<T>(v: Iterable<T>, name: string): T[] {
  try {
    return [...v];
  } catch (e) {
    throw invalid(`${name} could not be read: ${e instanceof Error ? e.message : String(e)}`.slice(0, 200));
  }
}

function strings(v: unknown, name: string): string[] {
  return reading(name, () => {
    const copy: unknown[] = Array.isArray(v) ? spread(v, name) : [];
    if (!Array.isArray(v) || !copy.every((x) => typeof x === "string")) {
      throw invalid(`${name} must be an array of strings, got ${describe(v)}`);
    }
    return copy as string[];
  });
}

/** JSON text of an argument given as an object (BigInts and cycles are refused). */
function json(v: unknown, name: string): string {
  return reading(name, () => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw invalid(`${name} must be an object, got ${describe(v)}`);
    }
    try {
      return JSON.stringify(v);
    } catch (e) {
      throw invalid(`${name} cannot be written as JSON: ${e instanceof Error ? e.message : String(e)}`);
    }
  });
}

/** Verifies and folds a history into canonical state JSON (the exact bytes native Rust gives). */
export function replayJson(history: HistoryInput): string {
  need();
  return raw.replay(historyInput(history));
}

/** Verifies and folds a history. */
export function replay(history: HistoryInput): PaymentState {
  return JSON.parse(replayJson(history)) as PaymentState;
}

/** Canonical state JSON after sequence `seq`. */
export function stateAtJson(history: HistoryInput, seq: number): string {
  need();
  return raw.stateAt(historyInput(history), num(seq, "seq"));
}

/**
 * Folds a history **without verifying** its hash chain (the rules still apply): for a
 * history verified already. Same canonical state JSON as `replayJson` for a valid one.
 */
export function replayUnverifiedJson(history: HistoryInput): string {
  need();
  return raw.replayUnverified(historyInput(history));
}

/** The state after sequence `seq`. */
export function stateAt(history: HistoryInput, seq: number): PaymentState {
  return JSON.parse(stateAtJson(history, seq)) as PaymentState;
}

/**
 * Verifies a history: its hash chain, the rules and, given both, the server's signed
 * head against its pinned public key. Never throws for a history that does not verify:
 * see `ok`. Throws `invalid_input` for a misuse of the arguments, whatever the history:
 * a history that is neither a string nor a `Uint8Array`, or a signed head without a
 * public key or a key without a signed head (pass both, or neither to check the hash
 * chain only); and `malformed_json` for a signed head that is not one.
 */
export function verify(history: HistoryInput, signedHeadJson?: string, publicKeyHex?: string): VerifyResult {
  need();
  return raw.verify(historyInput(history), optStr(signedHeadJson, "signedHeadJson"), optStr(publicKeyHex, "publicKeyHex"));
}

/** What the given roles may see of the payment (state and events, redacted by the policy). */
export function view(history: HistoryInput, roles: readonly string[]): PaymentView {
  need();
  return JSON.parse(raw.view(historyInput(history), strings(roles, "roles"))) as PaymentView;
}

/** The commands `actor` may issue now (`now` defaults to the time of the last event). */
export function allowedCommands(history: HistoryInput, actor: Actor, now?: string): CommandKind[] {
  need();
  return raw.allowedCommands(historyInput(history), json(actor, "actor"), optStr(now, "now")) as CommandKind[];
}

/**
 * When the platform's clock next has something to do for the payment (RFC 3339 UTC), or
 * `null`: funds reaching good funds, a funding deadline passing, an automatic release
 * coming due. The server records it then, as the `system` actor; a widget can show
 * "funds available on …" or "funding deadline in …".
 */
export function nextTick(history: HistoryInput): string | null {
  need();
  return raw.nextTick(historyInput(history)) ?? null;
}

/**
 * Decides a command against the history's state without sending it: the events it
 * would produce, or throws the rejection (`code` names the rule). Pass `"[]"` as the
 * history for `Initiate`.
 */
export function decide(history: HistoryInput, command: Command, context: CommandContext): EventEnvelope[] {
  need();
  return JSON.parse(raw.decide(historyInput(history), json(command, "command"), json(context, "context"))) as EventEnvelope[];
}

/** Validates a policy document; throws `invalid_policy` with the `field` at fault. */
export function validatePolicy(policy: PolicyDocument | string): PolicySummary {
  need();
  return raw.validatePolicy(typeof policy === "string" ? policy : json(policy, "policy"));
}

/** `a + b` in `currency`, exact: `moneyAdd("1.10", "2", "USD") === "3.10"`. */
export function moneyAdd(a: string, b: string, currency: string): string {
  need();
  return raw.moneyAdd(str(a, "a"), str(b, "b"), str(currency, "currency"));
}

/** `a - b` in `currency`, exact (may be negative). */
export function moneySub(a: string, b: string, currency: string): string {
  need();
  return raw.moneySub(str(a, "a"), str(b, "b"), str(currency, "currency"));
}

/** Splits `amount` by integer weights; the parts sum exactly to `amount`. */
export function moneyAllocate(amount: string, currency: string, weights: readonly number[]): string[] {
  need();
  // Any iterable, copied here; anything else (a primitive: nothing of it can throw)
  // goes to the module, which says what is wrong.
  const list = reading("weights", () => {
    const iterable = typeof (weights as { [Symbol.iterator]?: unknown } | null)?.[Symbol.iterator] === "function";
    if (iterable) return spread(weights, "weights");
    if (typeof weights === "object" && weights !== null) {
      throw invalid("weights must be an array of numbers, got an object");
    }
    return weights;
  });
  return raw.moneyAllocate(str(amount, "amount"), str(currency, "currency"), list as number[]);
}

/** `bps` basis points of `amount`, rounded half away from zero to the minor unit. */
export function moneyBps(amount: string, currency: string, bps: number): string {
  need();
  return raw.moneyBps(str(amount, "amount"), str(currency, "currency"), num(bps, "bps"));
}

/** `"1500.00 USD"`: the amount at the currency's scale and its code. */
export function formatMoney(amount: string, currency: string): string {
  need();
  return raw.formatMoney(str(amount, "amount"), str(currency, "currency"));
}

/** The package version. */
export function version(): string {
  need();
  return raw.version();
}

/**
 * Checks a `live()` call's callbacks; returns `onError` as the glue takes it (its
 * errors typed as trustfold's).
 */
function liveCallbacks(onUpdate: unknown, onError: unknown): ((e: Error) => void) | undefined {
  if (typeof onUpdate !== "function") throw invalid(`onUpdate must be a function, got ${describe(onUpdate)}`);
  if (onError !== undefined && typeof onError !== "function") {
    throw invalid(`onError must be a function or undefined, got ${describe(onError)}`);
  }
  return onError === undefined
    ? undefined
    : surfaced((e: Error) => (onError as (e: TrustfoldError) => void)(e as TrustfoldError));
}

/**
 * `f`, with what it throws thrown again on its own (an uncaught error in the page or
 * process, as a throwing event listener's is) instead of into the module, whose glue
 * would swallow it: a widget whose `onUpdate` fails must not freeze silently.
 */
function surfaced<A extends unknown[]>(f: (...args: A) => void): (...args: A) => void {
  return (...args: A) => {
    try {
      f(...args);
    } catch (e) {
      queueMicrotask(() => {
        throw e;
      });
    }
  };
}

/**
 * What `Client` passes the feeds' constructors: not exported, so a feed made with `new`
 * by anyone else is refused at once (it would hold no connection to any server and
 * fail later with an obscure error). Their declarations say `private constructor()`.
 */
const FROM_CLIENT = Symbol("trustfold.feedFromClient");

/** A feed class as `Client` calls it (its constructor is private to the declarations). */
type FeedClass<T, R> = new (token: typeof FROM_CLIENT, inner: R) => T;

/** The refusal of a feed made with `new`: says how to get one. */
function madeWithNew(name: string, how: string): TrustfoldError {
  return invalid(
    `${name} cannot be made with \`new\`: get one from a Client: \`new Client({ baseUrl, token, serverKey }).${how}\``,
  );
}

/**
 * One payment followed from the server: verified history, state, live updates. Get one
 * from `client.payment(paymentId)`; `new PaymentFeed()` throws `invalid_input`.
 */
export class PaymentFeed {
  readonly #raw: Raw.PaymentFeed;

  private constructor(token: typeof FROM_CLIENT, inner: Raw.PaymentFeed) {
    if (token !== FROM_CLIENT) throw madeWithNew("PaymentFeed", "payment(paymentId)");
    this.#raw = inner;
  }

  /** Sequence number of the last verified record held (0 when empty). */
  get seq(): number {
    return this.#raw.seq;
  }

  /** The state of the records held, or `undefined` before the first sync. */
  state(): PaymentState | undefined {
    const s = this.#raw.state();
    return s === undefined ? undefined : (JSON.parse(s) as PaymentState);
  }

  /** The records held as a history document (for `replay`, `view`, `decide`…). */
  history(): string {
    return this.#raw.history();
  }

  /**
   * Fetches new records page by page, verifying each (and, with `serverKey`, the
   * server's signed head over all of them; without it, that they do not end inside a
   * command); resolves to the state. All or nothing.
   */
  async sync(): Promise<PaymentState | undefined> {
    const s = await this.#raw.sync();
    return s === undefined ? undefined : (JSON.parse(s) as PaymentState);
  }

  /**
   * Follows the payment over Server-Sent Events. `onUpdate` gets the state after new
   * verified records (with `serverKey`: signed too), `seq` always increasing, never
   * after `close()`, and never inside a command (a record its command's next one
   * follows is reported with that one). `onError` gets errors with `retrying`: `true` when the feed goes
   * on (no answer, a 5xx, 408 or 429: it reconnects with backoff, reading what it
   * missed first), `false` when it stopped (a record that does not verify, a refused
   * or expired token). A stream silent for `liveCheckMs` is checked over HTTP. Needs a
   * participant token (or none) and the platform's `EventSource`.
   */
  live(onUpdate: (state: PaymentState, seq: number) => void, onError?: (error: TrustfoldError) => void): void {
    const errors = liveCallbacks(onUpdate, onError);
    const update = surfaced(onUpdate);
    beforeLive();
    this.#raw.live(
      (json: string, seq: number) => update(JSON.parse(json) as PaymentState, seq),
      errors,
    );
  }

  /** Stops following. */
  close(): void {
    this.#raw.close();
  }
}

/**
 * The server's view of one payment for a participant from whose roles the policy hides
 * something (see `Client.paymentView`), kept up to date. **Not verified.** Get one from
 * `client.viewFeed(paymentId)`; `new PaymentViewFeed()` throws `invalid_input`.
 */
export class PaymentViewFeed {
  readonly #raw: Raw.PaymentViewFeed;

  private constructor(token: typeof FROM_CLIENT, inner: Raw.PaymentViewFeed) {
    if (token !== FROM_CLIENT) throw madeWithNew("PaymentViewFeed", "viewFeed(paymentId)");
    this.#raw = inner;
  }

  /** The state's version of the view held (0 before the first `refresh()`). */
  get version(): number {
    return this.#raw.version;
  }

  /** The view held, or `undefined` before the first `refresh()`. */
  view(): PaymentView | undefined {
    const v = this.#raw.view();
    return v === undefined ? undefined : (JSON.parse(v) as PaymentView);
  }

  /** Reads the server's view again; resolves to the view held, never an older one. */
  async refresh(): Promise<PaymentView> {
    return JSON.parse(await this.#raw.refresh()) as PaymentView;
  }

  /**
   * Follows the payment over Server-Sent Events: each event the participant may see
   * past the view held makes the feed read the view again and call `onUpdate` with it
   * (never after `close()`), as does a stream silent for `liveCheckMs` (events hidden
   * from the participant's roles send nothing). `onError` gets errors with `retrying`:
   * `true` when the feed goes on (no answer, a 5xx, 408 or 429: it reconnects with
   * backoff, reading the view first), `false` when it stopped (a view of another
   * payment, a refused or expired token).
   */
  live(onUpdate: (view: PaymentView) => void, onError?: (error: TrustfoldError) => void): void {
    const errors = liveCallbacks(onUpdate, onError);
    const update = surfaced(onUpdate);
    beforeLive();
    this.#raw.live(
      (json: string) => update(JSON.parse(json) as PaymentView),
      errors,
    );
  }

  /** Stops following. */
  close(): void {
    this.#raw.close();
  }
}

/** The options a `Client` takes (the module refuses any other). */
const CLIENT_OPTIONS = ["baseUrl", "token", "serverKey", "timeoutMs", "liveCheckMs"];

/** A trustfold server, seen by one participant (token) and pinned to its key. */
export class Client {
  readonly #raw: Raw.Client;

  constructor(options: ClientOptions) {
    need();
    // A plain copy (the known options, and any other own key so the module can name
    // it): the module reads nothing of the caller's object itself.
    const plain = reading("client options", () => {
      if (typeof options !== "object" || options === null) return options;
      const o = options as unknown as Record<string, unknown>;
      const copy: Record<string, unknown> = {};
      for (const k of [...CLIENT_OPTIONS, ...Object.keys(o)]) {
        const v = o[k];
        if (v !== undefined || Object.prototype.hasOwnProperty.call(o, k)) copy[k] = v;
      }
      return copy;
    });
    this.#raw = new raw.Client(plain as unknown as ClientOptions);
  }

  /** A feed for one payment (empty until `sync()`). */
  payment(paymentId: string): PaymentFeed {
    const feed = PaymentFeed as unknown as FeedClass<PaymentFeed, Raw.PaymentFeed>;
    return new feed(FROM_CLIENT, this.#raw.payment(str(paymentId, "paymentId")));
  }

  /**
   * The payment as the server shows this participant: its state and events with the
   * policy's redactions for the participant's roles applied. **Not verified** (a
   * redacted view has no hashes to check): for participants from whose roles the
   * policy hides something, whose feed `sync()` fails with `redacted_history`.
   * Everyone else should follow a verified `payment(id)` feed.
   */
  async paymentView(paymentId: string): Promise<PaymentView> {
    return JSON.parse(await this.#raw.paymentView(str(paymentId, "paymentId"))) as PaymentView;
  }

  /** The server's view of one payment, kept up to date: `refresh()`, `live()`. */
  viewFeed(paymentId: string): PaymentViewFeed {
    const feed = PaymentViewFeed as unknown as FeedClass<PaymentViewFeed, Raw.PaymentViewFeed>;
    return new feed(FROM_CLIENT, this.#raw.viewFeed(str(paymentId, "paymentId")));
  }

  /**
   * Sends a command with an idempotency key (and the expected version as `If-Match`);
   * resolves to the server's answer: the new events and the state they lead to, as
   * the participant may see them (the same answer again for a retry with the key).
   * With a pinned `serverKey` the answer must carry the server's signature for this
   * very request (a fresh nonce), or it rejects with `bad_signature`; the command may
   * have been applied, so send it again with the same idempotency key.
   */
  async sendCommand(paymentId: string, command: Command, idempotencyKey: string, expectedVersion?: number): Promise<CommandResult> {
    const body = await this.#raw.sendCommand(
      str(paymentId, "paymentId"),
      json(command, "command"),
      str(idempotencyKey, "idempotencyKey"),
      expectedVersion === undefined ? undefined : num(expectedVersion, "expectedVersion"),
    );
    let result: unknown;
    try {
      result = JSON.parse(body);
    } catch {
      throw failure("malformed_json", "the server's answer to the command is not JSON");
    }
    const r = result as Partial<CommandResult> | null;
    if (
      typeof r !== "object" || r === null || typeof r.version !== "number" || !Array.isArray(r.events) ||
      typeof r.payment_id !== "string" || typeof r.state !== "object" || r.state === null
    ) {
      throw failure("malformed_json", "the server's answer to the command is not {payment_id, version, events, state}");
    }
    // An API key's answer carries history records ({hash, event}): their envelopes.
    const events = r.events.map((e: unknown) => {
      const rec = e as { hash?: unknown; event?: unknown } | null;
      return typeof rec === "object" && rec !== null && typeof rec.hash === "string" &&
        typeof rec.event === "object" && rec.event !== null
        ? (rec.event as EventEnvelope)
        : (e as EventEnvelope);
    });
    return { ...(r as CommandResult), events };
  }
}

export type * from "./types.js";
