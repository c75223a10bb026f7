"""bench/e2e.sh's broker side (DEST=nats|amqp|redis), with the brokers' own
Python clients: makes what wasmhook publishes to (a JetStream stream, a
durable queue; a Redis stream needs nothing), and counts what arrived.

    bus.py setup nats|amqp|redis URL
    bus.py count nats|amqp|redis URL
"""

import asyncio
import sys

NAME = "bench"


async def nats_call(url, setup):
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    if setup:
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
        n = 0
    else:
        n = (await js.stream_info("BENCH")).state.messages
    await nc.close()
    return n


def main():
    verb, kind, url = sys.argv[1:4]
    if kind == "nats":
        n = asyncio.run(nats_call(url, verb == "setup"))
    elif kind == "amqp":
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        q = conn.channel().queue_declare(queue=NAME, durable=True, passive=verb != "setup")
        n = q.method.message_count
        conn.close()
    else:
        import redis

        n = redis.Redis.from_url(url).xlen(NAME)
    print(n)


if __name__ == "__main__":
    main()
