/**
 * The JSON shapes of trustfold's domain, as the Rust core serializes them.
 * Ids are UUID strings, hashes 64 hex digits, times RFC 3339 UTC strings, money an
 * exact decimal string with its ISO 4217 currency.
 */

/** A UUID string. */
export type Uuid = string;
/** A SHA-256 hash as 64 lower-case hex digits. */
export type HashHex = string;
/** An RFC 3339 UTC timestamp, e.g. `2026-11-26T09:00:00Z`. */
export type Timestamp = string;
/** A role name from the policy (`buyer`, `seller`, `escrow_holder` …), or `system` / `rail`. */
export type Role = string;

/** An exact amount: a decimal string at the currency's scale and an ISO 4217 code. */
export interface Money {
  amount: string;
  currency: string;
}

export type Status =
  | "Draft" | "AwaitingAgreement" | "AwaitingFunds" | "FundingInFlight" | "Funded" | "Held"
  | "AwaitingApprovals" | "Disbursing" | "Refunding" | "Disputed" | "Completed" | "Refunded"
  | "Expired" | "Cancelled" | "Shortfall" | "Recovered" | "WrittenOff" | "Closed";

export type Rail = "ach" | "wire" | "rtp" | "card" | "book";

export interface Participant {
  roles: Role[];
  /** Absent in a view whose policy hides contacts (`view`, `Client.paymentView`). */
  name?: string;
  email?: string;
  joined: boolean;
  agreed: boolean;
  removed: boolean;
}

export interface FundingMethod {
  rail: Rail;
  institution: string;
  account_last4: string;
  holder: string;
}

export type FundingStatus = "submitted" | "settled" | "available" | "failed" | "returned";

export interface FundingAttempt {
  leg: Uuid;
  amount: Money;
  rail: Rail;
  /** Absent in views that hide bank details. */
  rail_ref?: string;
  status: FundingStatus;
  submitted_at: Timestamp;
  settled_at?: Timestamp;
  /** What did not arrive of it, when the rail settled less (a short settlement). */
  short?: Money;
  /** Failure or return code. */
  code?: string;
  /** What a return took of it, when it took only part; the rest still counts. */
  returned?: Money;
}

export interface Funding {
  method?: FundingMethod;
  deadline?: Timestamp;
  deadline_missed: boolean;
  /** `null` in views whose events leave out `FundingFailed` or `FundingReturned`. */
  failed_attempts: number | null;
  /** `null` in views that hide amounts; without failed or returned attempts (and any
   * attempt's `code` and `returned`) in views whose events leave out `FundingFailed` or
   * `FundingReturned`. */
  attempts: FundingAttempt[] | null;
}

export interface Allocation {
  party: Uuid;
  amount: Money;
}

export type RequestKind = "release" | "refund";
export type RequestStatus =
  | "awaiting_approvals" | "authorized" | "submitted" | "settled" | "failed" | "denied" | "cancelled";
export type Mandate = "auto_release" | "cancellation" | "expiry" | "dispute_resolution";
export type BorneBy = "payer" | "payee" | "platform" | string;

export interface FeeLine {
  fee: string;
  party: Uuid;
  amount: Money;
  borne_by: BorneBy;
}

export interface PaymentRequest {
  kind: RequestKind;
  status: RequestStatus;
  allocations?: Allocation[];
  /** Absent in views that hide amounts. */
  amount?: Money;
  fees?: FeeLine[];
  /** Absent in views that hide amounts (a digest of them). */
  allocations_hash?: HashHex;
  mandate?: Mandate;
  /** Who approved, each with the allocations hash it bound (`true` in views that hide amounts). */
  approvals: Record<Uuid, HashHex | true>;
  denials?: Record<Uuid, string>;
  requested_by?: Uuid;
  requested_at: Timestamp;
  legs?: Uuid[];
  rail_ref?: string;
  failure?: string;
}

export type DisputeOutcome = "resume" | "release" | "refund";

export interface Dispute {
  open: boolean;
  reason: string;
  opened_by?: Uuid;
  opened_at: Timestamp;
  outcome?: DisputeOutcome;
  resolution_request?: Uuid;
}

export type LegStatus = "pending" | "posted" | "voided";

export interface Leg {
  id: Uuid;
  from: string;
  to: string;
  amount: Money;
  status: LegStatus;
  group?: Uuid;
  opened_seq: number;
  resolved_seq?: number;
}

export interface Balance {
  posted: Money;
  pending_in: Money;
  pending_out: Money;
}

export interface Ledger {
  legs: Leg[];
  /** Keyed by account, e.g. `escrow`, `clearing`, `external:payer`. */
  balances: Record<string, Balance>;
}

export type RailTarget = { funding: Uuid } | { disbursement: Uuid } | "recovery";

export interface PolicyPin {
  id: string;
  version: number;
  hash: HashHex;
}

/** The state of one payment: what folding its history yields. */
export interface PaymentState {
  payment: Uuid;
  tenant: Uuid;
  /** Sequence number of the last event applied. */
  version: number;
  /** Hash of the last event applied. Absent in views that hide amounts (a digest of them). */
  head?: HashHex;
  status: Status;
  policy: PolicyPin;
  /** `null` in views that hide amounts. */
  amount: Money | null;
  description: string;
  initiator: Uuid;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** Absent in views that hide amounts (a digest of them). */
  terms_hash?: HashHex;
  participants: Record<Uuid, Participant>;
  funding: Funding;
  /** When funds were first fully held; an automatic release counts from here (a
   * return and a new funding do not start it again). */
  held_since?: Timestamp;
  /** `null` in views that hide the ledger or amounts. */
  ledger: Ledger | null;
  requests: Record<Uuid, PaymentRequest>;
  disputes: Record<Uuid, Dispute>;
  rail_refs?: Record<string, RailTarget>;
  fixed_fees_charged?: string[];
  /** Legs a reversal reversed (each at most once). */
  reversed_legs?: Uuid[];
  /** Rail notices about transfers not recorded yet, by rail reference (absent in views that hide bank details or amounts). */
  held_notices?: Record<string, RailOutcome[]>;
  cancelled: boolean;
  expired: boolean;
  closed: boolean;
  shortfall_outcome?: Status;
  last_settled?: RequestKind;
}

/** Who acts: a party in a role, or the platform (`party: null`, role `system` / `rail`). */
export interface Actor {
  party: Uuid | null;
  role: Role;
}

export type EventType =
  | "PaymentInitiated" | "ParticipantInvited" | "ParticipantJoined" | "ParticipantRemoved"
  | "TermsAgreed" | "FundingDeadlineSet" | "FundingMethodAttached" | "FundingSubmitted"
  | "FundingSettled" | "FundsAvailable" | "FundingFailed" | "FundingReturned"
  | "FundingDeadlineMissed" | "PaymentExpired" | "FeeAssessed" | "ReleaseRequested"
  | "ReleaseAmended" | "RefundRequested" | "ApprovalGranted" | "ApprovalDenied"
  | "ApprovalWithdrawn" | "ReleaseAuthorized" | "RefundAuthorized" | "RequestCancelled"
  | "DisbursementSubmitted" | "DisbursementSettled" | "DisbursementFailed" | "DisputeOpened"
  | "DisputeResolved" | "ReversalRecorded" | "ShortfallRecovered" | "ShortfallWrittenOff"
  | "PaymentCancelled" | "PaymentClosed" | "RailNoticeHeld";

/** A JSON value (what event payloads are made of). */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** An event in its envelope. `prev` is absent in redacted views. */
export interface EventEnvelope {
  prev?: HashHex;
  stream: Uuid;
  seq: number;
  id: Uuid;
  type: EventType;
  v: number;
  at: Timestamp;
  actor: Actor;
  causation?: Uuid | null;
  correlation?: Uuid | null;
  data: { [key: string]: Json };
  /** Present in views: whether anything was removed. */
  redacted?: boolean;
}

/** One record of a history as the server sends it. */
export interface HistoryRecord {
  hash: HashHex;
  event: EventEnvelope;
}

export type RailOutcome =
  /** `amount`: what arrived, when less than the transfer (a short settlement). */
  | { kind: "settled"; amount?: Money }
  | { kind: "failed"; code: string; reason?: string }
  | { kind: "returned"; code: string; reason?: string; amount?: Money };

/** A command, as `decide` and the server's `/commands` endpoint take it. */
export type Command =
  | { type: "Initiate"; payment: Uuid; tenant: Uuid; policy: PolicyDocument; amount: Money; description?: string; roles: Role[]; name?: string }
  | { type: "Invite"; party: Uuid; roles: Role[]; name?: string; email?: string }
  | { type: "Join" }
  | { type: "Remove"; party: Uuid; reason?: string }
  | { type: "AgreeToTerms"; terms_hash: HashHex }
  | { type: "AttachFundingMethod"; method: FundingMethod }
  | { type: "SubmitFunding"; amount: Money; rail: Rail; rail_ref: string }
  | { type: "RailNotice"; rail_ref: string; notice: RailOutcome }
  | { type: "Tick" }
  | { type: "RequestRelease"; request: Uuid; allocations: Allocation[] }
  | { type: "AmendRelease"; request: Uuid; allocations: Allocation[] }
  | { type: "RequestRefund"; request: Uuid; amount?: Money }
  | { type: "Approve"; request: Uuid; allocations_hash: HashHex }
  | { type: "Deny"; request: Uuid; reason?: string }
  | { type: "WithdrawApproval"; request: Uuid }
  | { type: "CancelRequest"; request: Uuid; reason?: string }
  | { type: "SubmitDisbursement"; request: Uuid; rail: Rail; rail_ref: string }
  | { type: "OpenDispute"; dispute: Uuid; reason?: string }
  | { type: "ResolveDispute"; dispute: Uuid; outcome: DisputeOutcome; request?: Uuid; allocations?: Allocation[]; amount?: Money; note?: string }
  | { type: "Cancel"; reason?: string; refund_request?: Uuid }
  | { type: "RecordReversal"; leg: Uuid; reason?: string }
  | { type: "RecordShortfallRecovery"; amount: Money; rail_ref: string }
  | { type: "WriteOffShortfall"; reason?: string }
  | { type: "Close"; reason?: string };

/** A command's type name. */
export type CommandKind = Command["type"];

/** Everything a command is judged with besides the state. */
export interface CommandContext {
  /** The command's id (its idempotency key): event ids derive from it. */
  command_id: Uuid;
  actor: Actor;
  now: Timestamp;
  correlation?: Uuid;
}

/** A policy document (validated by `validatePolicy`; see `examples/policies/`). */
export interface PolicyDocument {
  id: string;
  version: number;
  [key: string]: Json;
}

/**
 * The server's answer to a command: the events it appended (envelopes; the server's
 * answer to an API key carries them as history records, whose envelopes these are)
 * and the state after them — sent with a participant token, as the participant may see
 * it (redacted as in `PaymentView` when the policy hides something from the
 * participant's roles).
 */
export interface CommandResult {
  payment_id: Uuid;
  version: number;
  events: EventEnvelope[];
  state: PaymentState;
}

/** A role's redacted view of a payment. */
export interface PaymentView {
  state: PaymentState;
  events: EventEnvelope[];
}
