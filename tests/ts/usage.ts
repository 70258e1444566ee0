// A small app written against roomhub.d.ts: `.ci/tsc-check` compiles it
// with `tsc --noEmit --strict`, so the declarations stay usable (and wrong
// uses stay errors: see the @ts-expect-error lines).
import {
  RoomhubClient,
  type HistoryPage,
  type NewMessage,
  type RoomhubError,
  type ServerMessage,
} from "../../net/assets/roomhub.js";

const client = new RoomhubClient("wss://chat.example.com/ws", {
  token: "eyJ...",
  getToken: async () => (await fetch("/my-app/roomhub-token")).text(),
  transport: "auto",
});

const shown: string[] = [];
client.on("message", (m: NewMessage) => {
  shown.push(`${m.sender.name}: ${m.payload.content} (#${m.offset})`);
});
client.on("reset", ({ room, epoch, offset }) => {
  console.log(`reload ${room} from the backend (now ${epoch}/${offset})`);
});
client.on("state", (s) => {
  if (s === "auth_required") console.log("log in again");
});
client.on("transport", (t) => console.log(`now on ${t}`));
client.on("presence", ({ room, user, joined }) => {
  console.log(`${user.name} ${joined ? "joined" : "left"} ${room}`);
});
client.on("typing", ({ user, typing }) => console.log(user.id, typing));
client.on("frame", (f: ServerMessage) => {
  // Narrowing on `type` gives each message's own payload.
  switch (f.type) {
    case "room_info":
      console.log(f.payload.count, f.payload.recovered ?? "no since");
      break;
    case "error":
      console.log(f.payload.code, f.payload.message);
      break;
    case "history":
      console.log(f.payload.messages.length, f.payload.has_more);
      break;
    case "room_reset":
      console.log(f.payload.epoch);
      break;
    default:
      break;
  }
});
// @ts-expect-error: not an event the client raises
client.on("nonsense", () => {});

async function main(): Promise<void> {
  client.connect();
  const info = await client.join("general");
  console.log(info.users.map((u) => u.name).join(", "), info.epoch);
  const ack = await client.send("general", "hello", "2865533423d743bb-1");
  console.log(ack.message_id, ack.offset + 1);
  const page: HistoryPage = await client.history("general", { limit: 50 });
  if (page.has_more) await client.history("general", { before: page.messages[0].offset });
  const users = await client.onlineUsers("general");
  console.log(users.count);
  await client.typing("general");
  await client.typing("general", false);
  await client.direct("bob", "psst");
  // @ts-expect-error: content is a string
  await client.send("general", 42);
  try {
    await client.leave("general");
  } catch (e) {
    const err = e as RoomhubError;
    console.log(err.code === "DISCONNECTED", err.message);
  }
  for (const [room, state] of client.rooms) console.log(room, state.epoch, state.offset);
  console.log(client.transport === "sse" ? "over SSE" : "over WebSocket", shown.length);
  client.close();
}

void main();
