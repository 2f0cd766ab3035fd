"""Runs INSIDE the Label Studio virtual environment (never imported by crux).

Creates organisation members with a password, which the open-source REST API cannot do
(its user serializer has no password field). Reads a JSON request on stdin, prints JSON.
"""

import json
import os
import sys


def main() -> None:
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
    import django

    django.setup()
    from organizations.models import Organization
    from users.models import User

    request = json.load(sys.stdin)
    organization = Organization.objects.order_by("id").first()
    if organization is None:
        raise SystemExit("no organisation yet: start Label Studio once with `crux labelstudio up`")
    created = []
    for person in request["users"]:
        user = User.objects.filter(email=person["email"]).first()
        is_new = user is None
        if is_new:
            user = User.objects.create_user(email=person["email"], password=person["password"])
            user.first_name = person.get("first_name", "")
            user.save()
        if not organization.has_user(user):
            organization.add_user(user)
        if user.active_organization_id is None:
            user.active_organization = organization
            user.save(update_fields=["active_organization"])
        created.append({"email": user.email, "id": user.id, "created": is_new})
    json.dump({"users": created}, sys.stdout)


if __name__ == "__main__":
    main()
