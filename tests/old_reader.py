"""An old consumer and an old writer of kassa's topics, with fastavro (not kassa's Avro library).

Reads from stdin a JSON object {"writer": schema, "reader": schema, "datum": hex}: a record's
Avro body written with `writer` (kassa's current schema). Reads it with `reader` (an older
version of the schema) as a consumer that has not upgraded would, then writes what it read with
that older schema, as a producer that has not upgraded would. Prints {"read": the record as read
(the payload union's branch named), "rewritten": hex}. Used by tests/it/fulfilment.rs; run with
the venv `scripts/dev up` installs (KASSA_TEST_PYTHON).
"""
import io
import json
import sys

from fastavro import parse_schema, schemaless_reader, schemaless_writer


def plain(value):
    """fastavro's values as JSON: a named union branch as {"Name": record}, the rest as text."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {value[0].rsplit(".", 1)[-1]: plain(value[1])}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def main():
    request = json.load(sys.stdin)
    writer = parse_schema(json.loads(request["writer"]))
    reader = parse_schema(json.loads(request["reader"]))
    datum = io.BytesIO(bytes.fromhex(request["datum"]))
    record = schemaless_reader(datum, writer, reader, return_record_name=True)
    rewritten = io.BytesIO()
    schemaless_writer(rewritten, reader, record)
    json.dump({"read": plain(record), "rewritten": rewritten.getvalue().hex()}, sys.stdout)


if __name__ == "__main__":
    main()
