"""Consumes `--count` messages from an NSQ topic with pynsq, NSQ's official Python client,
decodes each with msgpack and prints it as one JSON object per line. Exits 1 on timeout.

Run by the Rust end-to-end test `interop_python_decodes_results` against the results the
real worker published; the Rust side checks what this prints."""

import argparse
import json
import sys

import msgpack
import nsq
import tornado.ioloop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nsqd-tcp-address", required=True)
    ap.add_argument("--topic", default="results")
    ap.add_argument("--channel", default="python")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    loop = tornado.ioloop.IOLoop.current()
    state = {"got": 0, "code": 1}

    def handle(message):
        doc = msgpack.unpackb(message.body, raw=False)
        print(json.dumps(doc), flush=True)
        state["got"] += 1
        if state["got"] >= args.count:
            state["code"] = 0
            loop.add_callback(loop.stop)
        return True

    def timeout():
        print(f"timeout: {state['got']} of {args.count} messages", file=sys.stderr)
        loop.stop()

    nsq.Reader(
        message_handler=handle,
        nsqd_tcp_addresses=[args.nsqd_tcp_address],
        topic=args.topic,
        channel=args.channel,
        max_in_flight=100,
    )
    loop.call_later(args.timeout, timeout)
    loop.start()
    return state["code"]


if __name__ == "__main__":
    sys.exit(main())
