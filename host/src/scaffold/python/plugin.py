"""A wasmhook plugin: turns each new chat message into a short notification
for a team channel, and skips every other event.

Build: `make` (writes plugin.wasm). Try it: `make run`, or
  wasmhook plugin run plugin.wasm --event event.json --config config.json
"""


def check_config(config):
    """Runs when a subscription is created or changed: raise to refuse its settings."""
    channel = config.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ValueError('channel must be a string such as "#support"')


def handle(event, config):
    """Runs once per event routed to the subscription."""
    if event["type"] != "message.created":
        return {"skip": f"not a message: {event['type']}"}
    message = event["data"]
    if not isinstance(message.get("content"), str):
        raise ValueError("message.created without a text content")
    print(f"message {event['id']} from {message.get('author')}")
    return {
        "deliver": [
            {
                "body": {
                    "channel": config.get("channel", "#general"),
                    "text": f"[{message.get('author') or 'someone'}] {message['content']}",
                    "conversation": message.get("conversation_id"),
                    "at": event["occurred_at"],
                }
            }
        ]
    }


# Optional: with a window on the subscription, return {"hold": [{"group", "item"}]}
# from handle and turn each closed window's items into requests here.
# def flush(window, groups, config):
#     return [{"body": {"window": window, "key": g["key"], "count": len(g["items"])}} for g in groups]
