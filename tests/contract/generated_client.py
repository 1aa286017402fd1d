"""Places and follows an order through a client generated from kassa's OpenAPI document.

tests/it/api_generated_client.rs generates the client (openapi-python-client) into a directory and
runs this script with it on the path:

    python generated_client.py <client dir> <base URL> <storefront key> <customer> <sku>

It places one order for one unit of <sku> with pm_card_visa, then long-polls its status with
`?wait=` until it is final (or 60 s pass), every answer parsed into the generated types. It
prints one JSON line: the order id, the total, and each status seen in order.
"""

import json
import sys
import time
import uuid

client_dir, base_url, key, customer, sku = sys.argv[1:6]
sys.path.insert(0, client_dir)

from kassa_client import AuthenticatedClient  # noqa: E402  (generated at test time)
from kassa_client.api.orders import get_order, place_order  # noqa: E402
from kassa_client.models import LineRequest, OrderRequest, OrderStatus, OrderView  # noqa: E402

FINAL = {"completed", "rejected", "cancelled"}

client = AuthenticatedClient(base_url=base_url, token=key, raise_on_unexpected_status=True)
request = OrderRequest(
    customer_id=customer,
    lines=[LineRequest(sku=sku, quantity=1)],
    payment_method_id="pm_card_visa",
)
placed = place_order.sync_detailed(client=client, body=request, idempotency_key=str(uuid.uuid4()))
if placed.status_code != 202 or not isinstance(placed.parsed, OrderView):
    sys.exit(f"placing: {placed.status_code} {placed.content!r}")
order = placed.parsed

seen = [order.status]
deadline = time.monotonic() + 60
while seen[-1] not in FINAL and time.monotonic() < deadline:
    answer = get_order.sync_detailed(
        order.order_id, client=client, x_customer_id=customer, wait=10, since=seen[-1]
    )
    if answer.status_code != 200 or not isinstance(answer.parsed, OrderStatus):
        sys.exit(f"polling: {answer.status_code} {answer.content!r}")
    status = answer.parsed
    if status.status != seen[-1]:
        seen.append(status.status)

print(json.dumps({
    "order_id": str(order.order_id),
    "total_minor": order.total_minor,
    "currency": order.currency,
    "statuses": seen,
    "transitions": len(status.transitions) if len(seen) > 1 else 0,
}))
