"""A consumer that is not kassa's: confluent-kafka's Python client and its Avro deserializer.

Reads the messages named on stdin (a JSON list of {"topic", "partition", "offset"}) and prints a
JSON list of {"key", "value"} (and "headers", as text, with --headers), each value rendered the
way serde_json renders kassa's Rust types: timestamps as epoch milliseconds, uuids as text, the
envelope's payload union as {"ShortName": {...}}, and a nullable record (["null", record]) as the
record itself. Used by tests/it/common/foreign.rs; run with the venv `scripts/dev up` installs
(KASSA_TEST_PYTHON).
"""
import datetime
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value, tagged=False):
    """fastavro's Python values -> the JSON shape serde_json gives kassa's types.

    fastavro names the record of every union holding one (return_record_name); serde_json tags
    only the payload union (an enum in Rust), so other unions' records lose their name here.
    """
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        if tagged:
            return {value[0].rsplit(".", 1)[-1]: plain(value[1])}  # the payload's branch
        return plain(value[1])
    if isinstance(value, dict):
        return {k: plain(v, tagged=(k == "payload")) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def main() -> None:
    brokers, registry = sys.argv[1], sys.argv[2]
    with_headers = sys.argv[3:] == ["--headers"]
    wanted = json.load(sys.stdin)
    deserializer = AvroDeserializer(
        SchemaRegistryClient({"url": registry, "timeout": 10}), return_record_name=True
    )
    # One consumer for everything: each partition from the lowest offset wanted on it.
    start = {}
    for item in wanted:
        tp = (item["topic"], item["partition"])
        start[tp] = min(start.get(tp, item["offset"]), item["offset"])
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "kassa-foreign-consumer-test",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "socket.timeout.ms": 10000,
    })
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    found = {}
    want = {(i["topic"], i["partition"], i["offset"]) for i in wanted}
    deadline = time.monotonic() + 60
    while len(found) < len(want):
        if time.monotonic() > deadline:
            sys.exit(f"only {len(found)} of {len(want)} messages within 60s")
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        key = (message.topic(), message.partition(), message.offset())
        if key in want:
            value = deserializer(message.value(), SerializationContext(message.topic(), MessageField.VALUE))
            found[key] = {"key": message.key().decode("utf-8"), "value": plain(value)}
            if with_headers:
                found[key]["headers"] = {
                    k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])
                }
    consumer.close()
    json.dump([found[(i["topic"], i["partition"], i["offset"])] for i in wanted], sys.stdout)


if __name__ == "__main__":
    main()
