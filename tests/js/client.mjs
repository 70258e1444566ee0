// Drives net/assets/roomhub.js (the module the server serves at /roomhub.js)
// against a real server, in Node's own WebSocket. Run by
// tests/tests/js_client.rs: node --experimental-websocket client.mjs <module> <ws-url> <alice> <bob> <expired> <api-key>
// Prints "ok" and exits 0, or prints what went wrong and exits 1.

const [modulePath, url, aliceToken, bobToken, expiredToken, apiKey] = process.argv.slice(2);
const { RoomhubClient } = await import(modulePath);

function fail(why) {
  console.log(`FAIL: ${why}`);
  process.exit(1);
}

function until(what, check, ms = 10000) {
  return new Promise((resolve) => {
    const started = Date.now();
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() - started > ms) fail(`timed out waiting for ${what}`);
      setTimeout(poll, 10);
    };
    poll();
  });
}

const fast = { baseDelayMs: 50, maxDelayMs: 200 };
const alice = new RoomhubClient(url, { token: aliceToken, ...fast });
const bob = new RoomhubClient(url, { token: bobToken, tokenIn: "subprotocol", ...fast });
const seen = [];
const typing = [];
const presence = [];
bob.on("message", (m) => seen.push([m.offset, m.payload.content]));
bob.on("typing", (t) => typing.push(t.user.id));
alice.on("presence", (p) => presence.push(`${p.user.id}:${p.joined}`));

alice.connect();
bob.connect();
await until("both open", () => alice.state === "open" && bob.state === "open");
await alice.join("g");
const info = await bob.join("g");
if (info.count !== 2) fail(`room_info count ${info.count}`);
await until("alice sees bob join", () => presence.includes("bob:true"));

for (const n of [1, 2, 3]) {
  const ack = await alice.send("g", `m${n}`);
  if (ack.offset !== n) fail(`ack offset ${ack.offset} for m${n}`);
}
await alice.typing("g");
await until("bob has m1..m3 and the typing", () => seen.length === 3 && typing.length === 1);

// Bob's link drops; alice keeps talking; bob comes back on his own and
// rejoins with `since`.
const states = [];
bob.on("state", (s) => states.push(s));
bob.ws.close();
await until("bob notices", () => states.includes("reconnecting"));
for (const n of [4, 5, 6]) await alice.send("g", `m${n}`);
await until("bob back with m4..m6", () => bob.state === "open" && seen.length === 6, 10000);
const offsets = seen.map(([o]) => o).join(",");
if (offsets !== "1,2,3,4,5,6") fail(`bob saw offsets ${offsets}`);
if (!states.includes("reconnecting")) fail(`states ${states}`);

// History: the newest page, then the one before it.
const newest = await bob.history("g", { limit: 4 });
const got = newest.messages.map((m) => m.payload.content).join(",");
if (got !== "m3,m4,m5,m6" || !newest.has_more || newest.offset !== 6) {
  fail(`history page ${got} has_more ${newest.has_more} offset ${newest.offset}`);
}
const older = await bob.history("g", { limit: 4, before: newest.messages[0].offset });
if (older.messages.map((m) => m.offset).join(",") !== "1,2" || older.has_more) {
  fail(`older page ${JSON.stringify(older)}`);
}

// A token handed over on an open connection is a `refresh`: taken when it
// verifies, refused (the connection unchanged) when it does not.
await alice.setToken(aliceToken);
try {
  await bob.setToken(expiredToken);
  fail("an expired token was taken");
} catch (e) {
  if (e.code !== "INVALID_TOKEN") fail(`refresh error ${JSON.stringify(e)}`);
}
bob.token = bobToken;
if (alice.state !== "open" || bob.state !== "open") fail("a refresh closed a connection");

// A direct message, and a request that fails.
const dms = [];
bob.on("direct", (d) => dms.push(d.payload.content));
await alice.direct("bob", "psst");
await until("bob's direct message", () => dms.length === 1);
try {
  await alice.send("not-joined", "x");
  fail("sending to a room not joined succeeded");
} catch (e) {
  if (e.code !== "NOT_IN_ROOM") fail(`error ${JSON.stringify(e)}`);
}

// An expired token never opens a socket, and never loops.
let sockets = 0;
class Counting extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets += 1;
  }
}
const late = new RoomhubClient(url, { token: expiredToken, WebSocket: Counting, ...fast });
late.connect();
await new Promise((r) => setTimeout(r, 300));
if (late.state !== "auth_required" || sockets !== 0) fail(`expired: ${late.state}, ${sockets} sockets`);

// An in-band reset (what a cluster node sends when its Redis came back
// empty: tests/tests/cluster.rs shows the server side) moves the room to
// its new position and raises "reset"; messages of the new epoch follow.
const resets = [];
bob.on("reset", (r) => resets.push(r));
bob.receive({ type: "room_reset", room: "g", payload: { room_id: "g", epoch: "NEW", offset: 0, recovered: false } });
const g = bob.rooms.get("g");
if (resets.length !== 1 || resets[0].epoch !== "NEW" || g.epoch !== "NEW" || g.offset !== 0) {
  fail(`reset: ${JSON.stringify(resets)} ${JSON.stringify(g)}`);
}
bob.receive({ type: "new_message", room: "g", offset: 1, payload: { content: "fresh" } });
if (seen.at(-1)[1] !== "fresh") fail(`after the reset bob saw ${JSON.stringify(seen.at(-1))}`);

// The backend disconnects: 4200-4299 reconnects as usual, 4100-4199 ends
// the client for good.
const api = (method, params) =>
  fetch(`${url.replace(/^ws/, "http").replace(/\/ws$/, "")}/api/${method}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${apiKey}` },
    body: JSON.stringify(params),
  }).then((r) => r.json());
const bobStates = [];
bob.on("state", (s) => bobStates.push(s));
const kicked = await api("disconnect", { user: "bob", code: 4200 });
if (kicked.result?.connections !== 1) fail(`disconnect bob: ${JSON.stringify(kicked)}`);
await until("bob comes back after a 4200", () => bobStates.includes("reconnecting") && bob.state === "open");
const closes = [];
alice.on("close", (c) => closes.push(c.code));
const banned = await api("disconnect", { user: "alice", reason: "banned" });
if (banned.result?.connections !== 1) fail(`disconnect alice: ${JSON.stringify(banned)}`);
await until("alice closed for good", () => alice.state === "closed" && closes.includes(4100));
await new Promise((r) => setTimeout(r, 300));
if (alice.state !== "closed" || alice.ws) fail(`alice came back after a 4100: ${alice.state}`);

bob.close();
console.log("ok");
process.exit(0);
