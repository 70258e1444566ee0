// Type declarations for roomhub.js, the client of the roomhub v1 protocol
// (docs/protocol.md). Written by hand beside the module; `tsc --noEmit
// --strict` checks them against tests/ts/usage.ts in CI.

/** A user as the server shows it. */
export interface User {
  id: string;
  name: string;
}

/** Where a client is in a room: its history lineage and newest offset. */
export interface Position {
  epoch: string;
  offset: number;
}

/** The error codes of `error` frames (a hook may answer with its own). */
export type ErrorCode =
  | "INVALID_FORMAT"
  | "UNKNOWN_TYPE"
  | "INVALID_PAYLOAD"
  | "MISSING_ROOM"
  | "INVALID_ROOM"
  | "NOT_IN_ROOM"
  | "FORBIDDEN"
  | "TOO_MANY_ROOMS"
  | "RATE_LIMITED"
  | "CONTENT_TOO_LONG"
  | "RECIPIENT_OFFLINE"
  | "UNSUPPORTED_FRAME"
  | "UNAVAILABLE"
  | "INVALID_TOKEN"
  | "ROOM_FULL"
  | (string & {});

/** What a failed request rejects with (client-side codes included). */
export interface RoomhubError {
  code: ErrorCode | "DISCONNECTED" | "TOKEN_UNAVAILABLE";
  message: string;
  room?: string;
}

interface Frame<T extends string> {
  type: T;
  /** RFC 3339, UTC, milliseconds. */
  timestamp: string;
}

export interface RoomInfoPayload {
  room_id: string;
  users: User[];
  count: number;
  offset: number;
  epoch: string;
  /** Present when the join asked for `since`: whether every missed message was replayed. */
  recovered?: boolean;
}

export interface RoomInfo extends Frame<"room_info"> {
  room: string;
  payload: RoomInfoPayload;
}

export interface UserJoined extends Frame<"user_joined"> {
  room: string;
  payload: User;
  sender: User;
}

export interface UserLeft extends Frame<"user_left"> {
  room: string;
  payload: User;
  sender: User;
}

export interface NewMessage extends Frame<"new_message"> {
  room: string;
  /** `<epoch>-<offset>`. */
  id: string;
  offset: number;
  payload: { content: string; reply_to?: string };
  sender: User;
}

export interface UserTyping extends Frame<"user_typing"> {
  room: string;
  payload: { typing: boolean };
  sender: User;
}

export interface OnlineUsersPayload {
  room_id: string;
  users: User[];
  count: number;
}

export interface OnlineUsers extends Frame<"online_users"> {
  room: string;
  payload: OnlineUsersPayload;
}

export interface DirectMessage extends Frame<"direct_message"> {
  id: string;
  payload: { content: string };
  sender: User;
}

export interface SendAck {
  message_id: string;
  offset: number;
}

export interface Ack extends Frame<"ack"> {
  id: string;
  room?: string;
  /** `send_message`: `{message_id, offset}`; `send_direct`: `{message_id}`. */
  payload?: Partial<SendAck>;
}

export interface ErrorFrame extends Frame<"error"> {
  id?: string;
  payload: { code: ErrorCode; message: string };
}

export interface RoomResetPayload {
  room_id: string;
  offset: number;
  epoch: string;
  recovered: false;
}

export interface RoomReset extends Frame<"room_reset"> {
  room: string;
  payload: RoomResetPayload;
}

export interface RoomLeft extends Frame<"room_left"> {
  room: string;
  payload: { room_id: string; reason: "token" | "unsubscribed" | (string & {}) };
}

export interface HistoryPage {
  room_id: string;
  epoch: string;
  offset: number;
  /** Oldest first. */
  messages: NewMessage[];
  has_more: boolean;
}

export interface History extends Frame<"history"> {
  room: string;
  id: string;
  payload: HistoryPage;
}

/** Every message the server sends (over WebSocket, or as an SSE event's data). */
export type ServerMessage =
  | RoomInfo
  | UserJoined
  | UserLeft
  | NewMessage
  | UserTyping
  | OnlineUsers
  | DirectMessage
  | Ack
  | ErrorFrame
  | RoomReset
  | RoomLeft
  | History;

/** SSE only: the stream's first event, and its last when the server ends it. */
export type SseControl =
  | { type: "session"; session: string }
  | { type: "close"; code: number; reason: string };

export type ClientState =
  | "idle"
  | "connecting"
  | "open"
  | "reconnecting"
  | "auth_required"
  | "closed";

export type Transport = "websocket" | "sse";

/** The events `on()` raises, with what each handler is given. */
export interface RoomhubEvents {
  state: ClientState;
  /** Every server message, before the specific event. */
  frame: ServerMessage;
  message: NewMessage;
  room_info: RoomInfoPayload;
  /** A room could not be recovered: reload its history from your backend. */
  reset: { room: string; epoch: string; offset: number };
  left: { room: string; reason: string };
  online_users: OnlineUsersPayload;
  presence: { room: string; user: User; joined: boolean };
  typing: { room: string; user: User; typing: boolean };
  direct: DirectMessage;
  error: RoomhubError | { code: string; message: string; room?: string };
  close: { code: number; reason: string };
  refreshed: { exp: number | null };
  /** Auto mode moved to another transport (a WebSocket that never opened). */
  transport: Transport;
}

export interface RoomhubOptions {
  /** The JWT. */
  token?: string;
  /** Where the WebSocket carries the token: the query (default) or the subprotocol list. */
  tokenIn?: "query" | "subprotocol";
  /** Reconnect backoff: full jitter up to min(maxDelayMs, baseDelayMs * 2^attempt). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** The WebSocket class (default: the global one). */
  WebSocket?: { new (url: string, protocols?: string | string[]): WebSocket };
  /** A () => [0, 1) source for the jitter. */
  random?: () => number;
  /** Called before the token expires, and when reconnecting with an expired one. */
  getToken?: () => Promise<string | null | undefined>;
  refreshBeforeMs?: number;
  /** "auto" (default): WebSocket, falling back to SSE when it is missing or never opens. */
  transport?: "auto" | Transport;
  /** The server's base URL for SSE (default: the /ws URL as http(s), without /ws). */
  sseUrl?: string;
  EventSource?: { new (url: string): EventSource };
  fetch?: typeof fetch;
}

/** Per joined room: where the client is. */
export interface RoomState {
  epoch: string | null;
  offset: number;
  joined: boolean;
}

export class RoomhubClient {
  constructor(url: string, options?: RoomhubOptions);

  readonly state: ClientState;
  /** What the current (or next) connection uses. */
  readonly transport: Transport;
  readonly rooms: Map<string, RoomState>;
  token: string | undefined;
  random: () => number;
  baseDelayMs: number;
  maxDelayMs: number;

  /** Listens for an event; returns a function that stops listening. */
  on<K extends keyof RoomhubEvents>(type: K, handler: (detail: RoomhubEvents[K]) => void): () => void;

  connect(): void;
  /** Closes for good (no reconnect). */
  close(): void;
  /** A new token: reconnects if the old one was refused, else `refresh` on this connection. */
  setToken(token: string): Promise<unknown>;
  refresh(): Promise<void>;

  join(room: string): Promise<RoomInfoPayload>;
  leave(room: string): Promise<boolean>;
  /** Resolves once the message is stored and sequenced. */
  send(room: string, content: string, replyTo?: string): Promise<SendAck>;
  typing(room: string, on?: boolean): Promise<Record<string, never>>;
  direct(to: string, content: string): Promise<{ message_id: string }>;
  onlineUsers(room: string): Promise<OnlineUsersPayload>;
  /** A page of history: the newest `limit` (default 50, at most 100) before `before`. */
  history(room: string, page?: { limit?: number; before?: number }): Promise<HistoryPage>;
}

/** The SSE transport behind a WebSocket's shape (used by RoomhubClient). */
export class SseSocket {
  constructor(
    baseUrl: string,
    token: string,
    io?: { EventSource?: { new (url: string): EventSource } | null; fetch?: typeof fetch | null },
  );
  readonly readyState: 0 | 1 | 3;
  readonly session: string | null;
  onopen: (() => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(text: string): void;
  close(code?: number, reason?: string): void;
}
