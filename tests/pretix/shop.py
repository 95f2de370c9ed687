"""The shop the tier sells from, made with pretix's own models: run in the pretix venv.

    venv/bin/python tests/pretix/shop.py      (PRETIX_CONFIG_FILE set, DJANGO_SETTINGS_MODULE unset)

Creates (or finds) organizer "agent", event "tier" (live, in 30 days), a product "Ticket" at
10.00 EUR in an unlimited quota, a product "Limited ticket" at 10.00 EUR in a quota of a million,
and a team with every permission whose API token the order driver uses; prints one JSON line:
{"organizer", "organizer_id", "event", "item", "limited_item", "token"}. A new token on every run.
pretix locks a quota (pg_advisory_xact_lock, pretix/base/services/locking.py) only when it has a
size: an order of "Ticket" takes the event's shared lock alone, an order of "Limited ticket" also
the quota's exclusive lock, which every other such order waits for.
This file is executed by the venv's Python, never imported by the tests: it imports only pretix.
"""

import json
import os
from datetime import timedelta
from decimal import Decimal

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pretix.settings")

import django

django.setup()

from django.utils.timezone import now  # noqa: E402
from django_scopes import scopes_disabled  # noqa: E402
from pretix.base.models import Event, Item, Organizer, Quota, Team  # noqa: E402

ORGANIZER, EVENT = "agent", "tier"


def main() -> None:
    with scopes_disabled():
        organizer, _ = Organizer.objects.get_or_create(slug=ORGANIZER, defaults={"name": "pretix-agent"})
        event = Event.objects.filter(organizer=organizer, slug=EVENT).first()
        if event is None:
            event = Event.objects.create(organizer=organizer, slug=EVENT, name="pretix-agent tier", currency="EUR",
                                         date_from=now() + timedelta(days=30), live=True)
        item = event.items.filter(name="Ticket").first()
        if item is None:
            item = Item.objects.create(event=event, name="Ticket", default_price=Decimal("10.00"), active=True)
            quota = Quota.objects.create(event=event, name="Tickets", size=None)
            quota.items.add(item)
        limited = event.items.filter(name="Limited ticket").first()
        if limited is None:
            limited = Item.objects.create(event=event, name="Limited ticket", default_price=Decimal("10.00"),
                                          active=True)
            quota = Quota.objects.create(event=event, name="Limited tickets", size=1_000_000)
            quota.items.add(limited)
        team, _ = Team.objects.get_or_create(organizer=organizer, name="order driver", defaults={
            "all_events": True, "all_event_permissions": True, "all_organizer_permissions": True})
        token = team.tokens.create(name="order driver")
        print(json.dumps({"organizer": organizer.slug, "organizer_id": organizer.pk, "event": event.slug,
                          "item": item.pk, "limited_item": limited.pk, "token": token.token}))


main()
