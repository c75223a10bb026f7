"""What a per-subscription durable consumer costs a NATS JetStream cluster,
against a fixed set of partition consumers (issue 8: measure a design's cost
per subscription before choosing it).

Run by bench/nats-consumer-cost.sh, which starts the servers and reads their
memory and CPU; this script only talks to them:

  create URLS MODE N     create the work stream and the consumers, print
                         `created N in S s`
  ready  URLS MODE N     wait until every consumer answers an info request,
                         print `ready N in S s`

MODE: `per-sub` (a durable consumer per subscription, filtered on the
subscription's subject, the stream's replication) or `partitions` (N
consumers, one per partition; run with N = 64).
"""

import asyncio
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

STREAM = "WORK"


def consumers(n):
    return [f"c{i:05d}" for i in range(n)]


async def create(js, mode, n, replicas):
    try:
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=["work.>"],
                num_replicas=replicas,
                storage=StorageType.FILE,
            )
        )
    except Exception as e:  # already there from an earlier run
        print(f"stream: {e}", file=sys.stderr)
    sem = asyncio.Semaphore(32)

    async def one(name):
        async with sem:
            for attempt in range(20):
                try:
                    await js.add_consumer(
                        STREAM,
                        ConsumerConfig(
                            durable_name=name,
                            filter_subject=f"work.{name}.>",
                            ack_policy=AckPolicy.EXPLICIT,
                            ack_wait=30,
                            max_ack_pending=8,
                        ),
                        timeout=30,
                    )
                    return
                except Exception as e:
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)

    start = time.monotonic()
    await asyncio.gather(*(one(c) for c in consumers(n)))
    print(f"created {n} in {time.monotonic() - start:.1f} s")


async def ready(js, n):
    start = time.monotonic()
    pending = set(consumers(n))
    sem = asyncio.Semaphore(64)

    async def check(name):
        async with sem:
            try:
                await js.consumer_info(STREAM, name, timeout=5)
                return name
            except Exception:
                return None

    while pending:
        done = await asyncio.gather(*(check(c) for c in sorted(pending)))
        pending -= {d for d in done if d}
        if pending:
            await asyncio.sleep(0.5)
        if time.monotonic() - start > 900:
            print(f"ready {n - len(pending)} of {n} after 900 s")
            return
    print(f"ready {n} in {time.monotonic() - start:.1f} s")


async def main():
    cmd, urls, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    replicas = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    nc = await nats.connect(servers=urls.split(","), max_reconnect_attempts=-1)
    js = nc.jetstream(timeout=30)
    if cmd == "create":
        await create(js, mode, n, replicas)
    else:
        await ready(js, n)
    await nc.close()


asyncio.run(main())
