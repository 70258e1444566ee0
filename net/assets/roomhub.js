// roomhub.js: a dependency-free client for the roomhub v1 protocol.
// An ES module, no build step: import { RoomhubClient } from "/roomhub.js".
//
// It reconnects on its own (exponential backoff with full jitter), rejoins
// every room with `since` from the last offset and epoch it saw, drops
// duplicates by offset, and raises "reset" when a room could not be
// recovered (a rejoin told `recovered: false`, or an in-band `room_reset`),
// so the app reloads that room's history from its backend. A close with a
// code from 4100 to 4199 (the backend's `disconnect`, "do not come back")
// ends it for good (state "closed"); 4200-4299 reconnects as usual.
//
// With a `getToken` callback it also keeps its token fresh: before the
// token expires it asks for a new one and hands it to the server
// (`refresh`) on the same connection, and on reconnecting with an expired
// token it asks for one first.
//
// Where WebSocket is missing or cannot open (some proxies and carriers
// break upgrades), it speaks the same protocol over Server-Sent Events
// (`GET /sse` for the server's messages, `POST /sse/send` for requests),
// with the same API, events and recovery.

const AUTH_CLOSE_CODES = new Set([1008, 4401, 4403]);

/**
 * The SSE fallback behind a WebSocket's shape (readyState, onopen,
 * onmessage, onclose, send, close), so the client drives either the same
 * way. It opens once the server's `session` event names the session;
 * requests are posted one at a time, in order; the server's `close` event
 * (or a stream or request that fails) closes it with that code. The
 * EventSource's own reconnection is not used: the client reconnects and
 * rejoins every room with `since`, as over WebSocket.
 */
export class SseSocket {
  constructor(baseUrl, token, { EventSource, fetch } = {}) {
    this.base = baseUrl.replace(/\/$/, "");
    this.readyState = 0;
    this.session = null;
    this.queue = [];
    this.posting = false;
    this.fetch = fetch || globalThis.fetch.bind(globalThis);
    const ES = EventSource || globalThis.EventSource;
    this.es = new ES(`${this.base}/sse?token=${encodeURIComponent(token)}`);
    this.es.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "session" && this.readyState === 0) {
        this.session = frame.session;
        this.readyState = 1;
        this.onopen?.();
      } else if (frame.type === "close") {
        this.end(frame.code, frame.reason);
      } else if (this.readyState === 1) {
        this.onmessage?.({ data: event.data });
      }
    };
    // A refused stream, a dropped one, or one the server ended: either way
    // the client, not the browser, decides when to come back.
    this.es.onerror = () => this.end(1006, "the event stream failed");
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("the SSE session is not open");
    this.queue.push(text);
    this.pump();
  }

  async pump() {
    if (this.posting) return;
    this.posting = true;
    while (this.queue.length && this.readyState === 1) {
      const body = this.queue.shift();
      const url = `${this.base}/sse/send?session=${encodeURIComponent(this.session)}`;
      let status = 0;
      try {
        // text/plain: no CORS preflight for a page on another origin.
        const response = await this.fetch(url, {
          method: "POST",
          body,
          headers: { "Content-Type": "text/plain;charset=UTF-8" },
        });
        status = response.status;
      } catch {
        status = 0;
      }
      // 413 and 400 end the stream with the close that says why; anything
      // else but 204 means the session is gone or unreachable.
      if (status !== 204 && status !== 413 && status !== 400) {
        this.end(1006, `a request failed (${status || "network error"})`);
      }
    }
    this.posting = false;
  }

  close(code = 1000, reason = "") {
    this.end(code, reason);
  }

  end(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.queue = [];
    this.es.close();
    this.onclose?.({ code, reason });
  }
}

/** The SSE endpoint's base URL (http or https) for a /ws URL. */
function sseBase(wsUrl) {
  const url = new URL(wsUrl, globalThis.location?.href);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.replace(/\/ws\/?$/, "");
  url.search = "";
  return url.toString();
}

/** Seconds since the Unix epoch at which a JWT expires, if it says. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

export class RoomhubClient {
  /**
   * @param {string} url  ws:// or wss:// URL of the server's /ws endpoint
   * @param {object} options
   *   token: the JWT; tokenIn: "query" (default) or "subprotocol";
   *   baseDelayMs (500) and maxDelayMs (30000): reconnect backoff;
   *   WebSocket: the WebSocket class (default: the global one);
   *   random: a () => [0, 1) source for the jitter (default Math.random);
   *   getToken: an optional async () => JWT, called before the token
   *   expires (refreshBeforeMs ahead, 30000 by default, at most half its
   *   remaining life) and when reconnecting with an expired token;
   *   transport: "auto" (default: WebSocket, falling back to SSE when
   *   there is no WebSocket or it has never opened), "websocket" or "sse";
   *   sseUrl: the server's base URL for SSE (default: the /ws URL as
   *   http(s), without /ws); EventSource, fetch: for SSE (default: the
   *   global ones).
   */
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token;
    this.tokenIn = options.tokenIn || "query";
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30000;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.random = options.random || Math.random;
    this.getToken = options.getToken || null;
    this.refreshBeforeMs = options.refreshBeforeMs ?? 30000;
    this.refreshTimer = null;
    this.transportOption = options.transport || "auto";
    this.sseUrl = options.sseUrl || null;
    this.EventSource = options.EventSource || null;
    this.fetch = options.fetch || null;
    /** "websocket" or "sse": what the current (or next) connection uses. */
    this.transport =
      this.transportOption === "sse" || (this.transportOption === "auto" && !this.WebSocket)
        ? "sse"
        : "websocket";
    /** Whether a WebSocket ever opened (then failures are outages, not a blocked upgrade). */
    this.wsOpened = false;
    /** "idle" | "connecting" | "open" | "reconnecting" | "auth_required" | "closed" */
    this.state = "idle";
    /** room -> { epoch, offset, joined } */
    this.rooms = new Map();
    this.handlers = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
  }

  // ---- events ----

  /** Listens for an event; returns a function that stops listening. */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.handlers.get(type).delete(handler);
  }

  emit(type, detail) {
    for (const handler of this.handlers.get(type) || []) {
      try {
        handler(detail);
      } catch (e) {
        console.error(`roomhub: a "${type}" handler threw`, e);
      }
    }
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.emit("state", state);
    }
  }

  // ---- connection ----

  connect() {
    clearTimeout(this.timer);
    if (this.expired()) {
      if (this.getToken) this.renewThenConnect();
      else this.setState("auth_required");
      return;
    }
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws;
    if (this.transport === "sse") {
      ws = new SseSocket(this.sseUrl || sseBase(this.url), this.token, {
        EventSource: this.EventSource,
        fetch: this.fetch,
      });
    } else if (this.tokenIn === "subprotocol") {
      ws = new this.WebSocket(this.url, ["roomhub.v1", this.token]);
    } else {
      const sep = this.url.includes("?") ? "&" : "?";
      ws = new this.WebSocket(`${this.url}${sep}token=${encodeURIComponent(this.token)}`);
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      if (this.transport === "websocket") this.wsOpened = true;
      this.attempt = 0;
      this.setState("open");
      this.scheduleRefresh();
      for (const [room, state] of this.rooms) {
        if (state.joined) this.rejoin(room, state);
      }
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.receive(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.refreshTimer);
      this.failPending("DISCONNECTED", "the connection closed before an answer");
      this.emit("close", { code: event.code, reason: event.reason });
      if (this.state === "closed") return;
      // A WebSocket that never opened, on a client whose WebSocket never
      // has: the network may be breaking upgrades. Try SSE next.
      if (
        !opened &&
        this.transport === "websocket" &&
        this.transportOption === "auto" &&
        !this.wsOpened &&
        (this.EventSource || globalThis.EventSource)
      ) {
        this.transport = "sse";
        this.emit("transport", "sse");
      }
      if (event.code >= 4100 && event.code <= 4199) {
        // The backend disconnected this user for good (a ban): no reconnect.
        this.setState("closed");
        return;
      }
      if (AUTH_CLOSE_CODES.has(event.code) || this.expired()) {
        // A new token is needed: reconnecting with this one would loop.
        if (this.getToken) this.renewThenConnect();
        else this.setState("auth_required");
        return;
      }
      this.scheduleReconnect();
    };
  }

  /** Whether the token's `exp` has passed (a refused upgrade shows no reason). */
  expired() {
    const exp = this.token ? tokenExpiry(this.token) : null;
    return exp !== null && exp * 1000 <= Date.now();
  }

  scheduleReconnect() {
    // Full jitter: a random delay up to the exponential bound, so clients
    // of a restarted server do not all come back at once.
    const bound = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** this.attempt);
    const delay = Math.floor(this.random() * bound);
    this.attempt += 1;
    this.setState("reconnecting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /**
   * Gives a new token: connects again if the old one was refused; on an
   * open connection, hands it to the server (`refresh`, no reconnect) and
   * resolves once the server took it.
   */
  setToken(token) {
    this.token = token;
    if (this.state === "auth_required") {
      this.attempt = 0;
      this.connect();
      return Promise.resolve();
    }
    if (this.state !== "open") return Promise.resolve();
    return this.request("refresh", { payload: { token } }).then((ok) => {
      this.scheduleRefresh();
      return ok;
    });
  }

  /**
   * Asks `getToken` for a token to connect with; one that is missing,
   * expired or the one just refused leaves the client waiting for
   * setToken() ("auth_required") rather than looping.
   */
  async renewThenConnect() {
    const old = this.token;
    let token = null;
    try {
      token = await this.getToken();
    } catch (e) {
      this.emit("error", { code: "TOKEN_UNAVAILABLE", message: String(e) });
    }
    if (this.state === "closed") return;
    if (!token || token === old) {
      this.setState("auth_required");
      return;
    }
    this.token = token;
    if (this.expired()) {
      this.setState("auth_required");
      return;
    }
    this.connect();
  }

  /** Arms the refresh before the token expires (with getToken only). */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (!this.getToken || exp === null) return;
    const left = exp * 1000 - Date.now();
    const lead = Math.min(this.refreshBeforeMs, left / 2);
    const refresh = () =>
      this.refresh().catch((e) =>
        this.emit("error", { code: "TOKEN_UNAVAILABLE", message: String(e?.message ?? e) }),
      );
    this.refreshTimer = setTimeout(refresh, Math.max(0, left - lead));
  }

  /**
   * Gets a new token from getToken and hands it to the server on this
   * connection: the connection lives on, its expiry follows the new token,
   * and rooms the new token does not allow are left ("left" events).
   * Resolves once the server took it; raises "refreshed".
   */
  async refresh() {
    const token = await this.getToken();
    if (!token) throw { code: "TOKEN_UNAVAILABLE", message: "getToken gave no token" };
    this.token = token;
    if (this.state !== "open") return;
    try {
      await this.request("refresh", { payload: { token } });
      this.emit("refreshed", { exp: tokenExpiry(token) });
      this.scheduleRefresh();
    } catch (e) {
      // The connection closes at the old expiry; reconnecting asks again.
      this.emit("error", e);
    }
  }

  /** Closes for good (no reconnect). */
  close() {
    this.setState("closed");
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000, "client closed");
  }

  // ---- requests ----

  request(type, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== 1) {
        reject({ code: "DISCONNECTED", message: "not connected" });
        return;
      }
      const id = `r${this.nextId++}`;
      this.pending.set(id, { resolve, reject, type, room: fields.room });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  failPending(code, message) {
    for (const { reject } of this.pending.values()) reject({ code, message });
    this.pending.clear();
  }

  /** Joins a room; resolves with its room_info payload. */
  join(room) {
    const state = this.rooms.get(room) || { epoch: null, offset: 0, joined: false };
    state.joined = true;
    this.rooms.set(room, state);
    return this.request("join_room", { payload: { room_id: room } });
  }

  rejoin(room, state) {
    const payload = { room_id: room };
    if (state.epoch) payload.since = { offset: state.offset, epoch: state.epoch };
    this.request("join_room", { payload }).catch((e) => this.emit("error", { room, ...e }));
  }

  leave(room) {
    const state = this.rooms.get(room);
    if (state) state.joined = false;
    return this.request("leave_room", { payload: { room_id: room } }).then(() =>
      this.rooms.delete(room),
    );
  }

  /** Sends a message; resolves with `{message_id, offset}` once stored. */
  send(room, content, replyTo) {
    const payload = { content };
    if (replyTo) payload.reply_to = replyTo;
    return this.request("send_message", { room, payload });
  }

  typing(room, on = true) {
    return this.request(on ? "typing" : "stop_typing", { room });
  }

  direct(to, content) {
    return this.request("send_direct", { payload: { to, content } });
  }

  /** Resolves with the room's users. */
  onlineUsers(room) {
    return this.request("online_users", { room });
  }

  /**
   * A page of a joined room's history: the newest `limit` messages (50 by
   * default, at most 100) before offset `before` (the newest when absent).
   * Resolves with `{room_id, epoch, offset, messages, has_more}`; each
   * message is a `new_message` frame (with `offset`, `sender`, `timestamp`),
   * oldest first. Page back with `before: messages[0].offset`.
   */
  history(room, { limit, before } = {}) {
    const payload = {};
    if (limit !== undefined) payload.limit = limit;
    if (before !== undefined) payload.before = before;
    return this.request("history", { room, payload });
  }

  // ---- frames from the server ----

  receive(frame) {
    this.emit("frame", frame);
    const room = frame.room;
    switch (frame.type) {
      case "new_message": {
        const state = this.rooms.get(room);
        if (state) {
          // A replay can overlap what arrived live: offsets say which.
          if (frame.offset <= state.offset) return;
          state.offset = frame.offset;
        }
        this.emit("message", frame);
        return;
      }
      case "room_info": {
        const info = frame.payload;
        const state = this.rooms.get(info.room_id) || { joined: true };
        const reset = info.recovered === false;
        state.epoch = info.epoch;
        state.offset = info.offset;
        this.rooms.set(info.room_id, state);
        this.lastInfo = info;
        this.emit("room_info", info);
        if (reset) this.emit("reset", { room: info.room_id, epoch: info.epoch, offset: info.offset });
        return;
      }
      case "room_reset": {
        // The room's history could not be continued (its broker came back
        // empty, or what this connection missed was trimmed): the room goes
        // on from a new position, on this same connection.
        const reset = frame.payload;
        const state = this.rooms.get(reset.room_id);
        if (state) {
          state.epoch = reset.epoch;
          state.offset = reset.offset;
        }
        this.emit("reset", { room: reset.room_id, epoch: reset.epoch, offset: reset.offset });
        return;
      }
      case "history": {
        // The page comes just before the ack that resolves its request.
        const waiting = frame.id && this.pending.get(frame.id);
        if (waiting) waiting.page = frame.payload;
        return;
      }
      case "room_left": {
        // The server took this connection out of the room (a refreshed
        // token no longer allows it, or the backend unsubscribed it).
        const left = frame.payload;
        this.rooms.delete(left.room_id);
        this.emit("left", { room: left.room_id, reason: left.reason });
        return;
      }
      case "online_users":
        this.lastUsers = frame.payload;
        this.emit("online_users", frame.payload);
        return;
      case "ack":
        return this.answer(frame, true);
      case "error":
        if (frame.id && this.pending.has(frame.id)) return this.answer(frame, false);
        this.emit("error", frame.payload);
        return;
      case "user_joined":
      case "user_left":
        this.emit("presence", { room, user: frame.payload, joined: frame.type === "user_joined" });
        return;
      case "user_typing":
        this.emit("typing", { room, user: frame.sender, typing: frame.payload.typing });
        return;
      case "direct_message":
        this.emit("direct", frame);
        return;
    }
  }

  answer(frame, ok) {
    const waiting = this.pending.get(frame.id);
    if (!waiting) return;
    this.pending.delete(frame.id);
    if (!ok) {
      waiting.reject(frame.payload);
      return;
    }
    switch (waiting.type) {
      case "send_message": {
        // Acks come in offset order with the messages around them.
        const state = this.rooms.get(frame.room);
        if (state && frame.payload.offset > state.offset) state.offset = frame.payload.offset;
        waiting.resolve(frame.payload);
        return;
      }
      case "join_room":
        waiting.resolve(this.lastInfo);
        return;
      case "online_users":
        waiting.resolve(this.lastUsers);
        return;
      case "history":
        waiting.resolve(waiting.page);
        return;
      default:
        waiting.resolve(frame.payload || {});
    }
  }
}
