"""Every `next=` goes through plugin.navigation.safe_next: normalised, then confined to
the same launch; a target it refuses falls back to the form's own page, after the
change was saved (never a 500)."""

from __future__ import annotations

import re

import pytest

from plugin.navigation import safe_next

L = "launch-a"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (f"/l/{L}/", f"/l/{L}/"),
        (f"/l/{L}/tickets/7#notes", f"/l/{L}/tickets/7#notes"),
        (f"/l/{L}/board?date=2026-03-06", f"/l/{L}/board?date=2026-03-06"),
        # Traversal out of the launch, plain or percent-encoded, and anything that needed
        # normalising at all (our pages never write such a path).
        (f"/l/{L}/../../l/other/", None),
        (f"/l/{L}/%2e%2e/%2e%2e/l/other/", None),
        (f"/l/{L}/%2E%2E/other/", None),
        (f"/l/{L}/./tickets", None),
        (f"/l/{L}/tickets/../tickets", None),
        (f"/l/{L}x/", None),
        ("/l/other/", None),
        # Somewhere else entirely.
        ("https://evil.example/", None),
        ("//evil.example/x", None),
        ("/\\evil.example", None),
        (f"/l/{L}/\\evil", None),
        (f"/l/{L}//evil", None),
        ("javascript:alert(1)", None),
        ("tickets", None),
        # Header splitting, raw or encoded.
        (f"/l/{L}/\r\nSet-Cookie: x=1", None),
        (f"/l/{L}/%0d%0aSet-Cookie:%20x=1", None),
        (f"/l/{L}/\x00", None),
        ("", None),
        (None, None),
        (f"/l/{L}/" + "a" * 3000, None),
    ],
)
def test_safe_next_normalises_then_confines_to_the_launch(target, expected) -> None:  # type: ignore[no-untyped-def]
    assert safe_next(L, target) == expected


def test_traversal_out_of_the_launch_stays_in_the_launch(a, b) -> None:
    walk = f"/l/{a.launch_id}/../../l/{b.launch_id}/"
    made = a.form("/tickets", {"subject": "s", "category": "billing", "next": walk})
    assert made.status_code == 303
    location = made.headers["Location"]
    assert f"/l/{a.launch_id}/tickets/" in location and b.launch_id not in location
    ticket = re.search(r"/tickets/(\d+)\?ok=created$", location).group(1)  # type: ignore[union-attr]
    note = a.form(f"/tickets/{ticket}/notes", {"body": "called", "next": walk})
    assert note.status_code == 303 and b.launch_id not in note.headers["Location"]


@pytest.mark.parametrize("bad", ["/l/{id}/\r\nX-Injected: 1", "/l/{id}/%0d%0aX-Injected:%201"])
def test_cr_lf_next_after_a_saved_change_is_a_redirect_not_a_500(env, a, bad: str) -> None:
    target = bad.format(id=a.launch_id)
    made = a.form("/tickets", {"subject": "Saved anyway", "category": "billing", "next": target})
    assert made.status_code == 303
    assert "X-Injected" not in made.headers["Location"] and "X-Injected" not in made.headers
    ticket = re.search(r"/tickets/(\d+)\?ok=created$", made.headers["Location"]).group(1)  # type: ignore[union-attr]
    assert a.get(f"/tickets/{ticket}").json()["subject"] == "Saved anyway"
    note = a.form(f"/tickets/{ticket}/notes", {"body": "kept", "next": target})
    assert note.status_code == 303
    assert note.headers["Location"].endswith(f"/tickets/{ticket}?ok=note#notes")
    assert a.get(f"/tickets/{ticket}").json()["notes"][0]["body"] == "kept"
