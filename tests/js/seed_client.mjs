// The seed's own JavaScript client (seed 002, class WebSocketClient), read
// from ../shared/seeds at run time, not copied: connect, join, send and
// receive against roomhub. Run by tests/tests/js_client.rs:
// node --experimental-websocket seed_client.mjs <seed file> <ws-url> <alice> <bob>
import { readFileSync } from "node:fs";

const [seedFile, url, aliceToken, bobToken] = process.argv.slice(2);
const text = readFileSync(seedFile, "utf8");
const start = text.indexOf("class WebSocketClient {");
const end = text.indexOf("\n}\n", start);
if (start < 0 || end < 0) {
  console.log("FAIL: no WebSocketClient class in the seed");
  process.exit(1);
}
const WebSocketClient = new Function(`${text.slice(start, end + 2)}; return WebSocketClient;`)();
console.log = () => {}; // the seed logs every connect

function fail(why) {
  process.stdout.write(`FAIL: ${why}\n`);
  process.exit(1);
}

const alice = new WebSocketClient(url, aliceToken);
const bob = new WebSocketClient(url, bobToken);
const got = [];
let joined = 0;
bob.on("room_info", () => joined++);
alice.on("room_info", () => joined++);
// The seed's own example parses payload as a JSON string; roomhub sends an
// object (PROTOCOL.md), so this handler reads it as one.
bob.on("new_message", (m) => got.push([m.sender.name, m.payload.content]));
alice.connect();
bob.connect();
const deadline = Date.now() + 10000;
const wait = async (check, what) => {
  while (!check()) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};
await wait(() => alice.ws.readyState === 1 && bob.ws.readyState === 1, "both connected");
alice.joinRoom("general");
bob.joinRoom("general");
await wait(() => joined === 2, "both joined");
alice.sendMessage("general", "hello from the seed client");
await wait(() => got.length === 1, "bob receives alice's message");
if (got[0][1] !== "hello from the seed client") fail(`bob got ${JSON.stringify(got)}`);
alice.disconnect();
bob.disconnect();
process.stdout.write("ok\n");
process.exit(0);
