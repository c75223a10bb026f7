// A wasmhook plugin: turns each new chat message into a short notification
// for a team channel, and skips every other event.
//
// Build: `make` (writes plugin.wasm). Try it: `make run`, or
//   wasmhook plugin run plugin.wasm --event event.json --config config.json

// Runs when a subscription is created or changed: throw to refuse its settings.
export function checkConfig(config) {
  if (config.channel !== undefined && typeof config.channel !== "string") {
    throw new Error("channel must be a string such as \"#support\"");
  }
}

// Runs once per event routed to the subscription.
export function handle(event, config) {
  if (event.type !== "message.created") {
    return { skip: `not a message: ${event.type}` };
  }
  const message = event.data;
  if (typeof message.content !== "string") {
    throw new Error("message.created without a text content");
  }
  console.log(`message ${event.id} from ${message.author}`);
  return {
    deliver: [
      {
        body: {
          channel: config.channel ?? "#general",
          text: `[${message.author ?? "someone"}] ${message.content}`,
          conversation: message.conversation_id ?? null,
          at: event.occurredAt,
        },
      },
    ],
  };
}

// Optional: with a window on the subscription, return { hold: [{ group, item }] }
// from handle and turn each closed window's items into requests here.
// export function flush(window, groups, config) {
//   return groups.map((g) => ({ body: { window, key: g.key, count: g.items.length } }));
// }
