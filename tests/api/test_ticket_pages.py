"""The no-JavaScript ticket pages: forms that POST and redirect back, CSRF on forms,
escaping of patient-controlled text, labels on every input, and the same scoping."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from helpdesk.models import Ticket

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class _Controls(HTMLParser):
    """Form controls and labels of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = dict(attrs)
        if tag in ("input", "select", "textarea") and data.get("type") != "hidden":
            self.controls.append({"tag": tag, **data})
        if tag == "label" and data.get("for"):
            self.label_for.add(str(data["for"]))


def _controls(html: str) -> _Controls:
    parser = _Controls()
    parser.feed(html)
    return parser


def _ticket_id(location: str) -> int:
    match = re.search(r"/tickets/(\d+)\?ok=created$", location)
    assert match, location
    return int(match.group(1))


def test_new_ticket_form_creates_and_redirects_to_the_ticket(env, a) -> None:
    page = a.page("/tickets/new")
    assert page.status_code == 200
    assert f'value="{a.csrf}"' in page.text  # the page carries this launch's token
    response = a.form(
        "/tickets",
        {
            "subject": "Needs a ride",
            "category": "scheduling",
            "priority": "high",
            "description": "",
            "assignee": "",
        },
    )
    assert response.status_code == 303
    ticket_id = _ticket_id(response.headers["Location"])
    with env.db() as db:
        row = db.get(Ticket, ticket_id)
        assert (row.subject, row.priority, row.assignee, row.patient_ref) == (
            "Needs a ride",
            "high",
            None,
            "Patient/p1",
        )
    detail = a.page(f"/tickets/{ticket_id}?ok=created")
    assert detail.status_code == 200
    assert "Needs a ride" in detail.text
    assert 'data-testid="priority-badge">High priority<' in detail.text
    assert f"Ticket #{ticket_id} opened · due " in detail.text  # the confirmation


def test_form_redirects_back_only_to_this_launch_pages(a) -> None:
    base = {"subject": "s", "category": "billing"}
    mine = a.form("/tickets", {**base, "next": f"/l/{a.launch_id}/"})
    assert mine.headers["Location"].endswith(f"/l/{a.launch_id}/")
    for target in (
        "https://evil.example/",
        "//evil.example/x",
        "/l/other-launch/",
        f"/l/{a.launch_id}/\\evil",
    ):
        response = a.form("/tickets", {**base, "next": target})
        assert response.status_code == 303
        location = response.headers["Location"]
        assert re.search(rf"/l/{a.launch_id}/tickets/\d+\?ok=created$", location), target


def test_invalid_form_is_shown_again_with_messages_and_values(a) -> None:
    response = a.form(
        "/tickets", {"subject": "", "category": "astrology", "description": "kept text"}
    )
    assert response.status_code == 422
    assert "kept text" in response.text
    assert 'aria-invalid="true" aria-describedby="err-subject"' in response.text
    assert 'id="err-category"' in response.text


def test_patient_text_is_escaped_everywhere(env, a) -> None:
    created = a.post("/tickets", {"subject": XSS, "category": "feedback", "description": XSS})
    ticket_id = created.json()["id"]
    a.post(
        f"/tickets/{ticket_id}/notes", {"body": XSS, "channel": "portal", "direction": "inbound"}
    )
    for path in (f"/tickets/{ticket_id}", "/tickets"):
        html = a.page(path).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    bad = a.form("/tickets", {"subject": XSS, "category": "nope"})
    assert "<script>alert" not in bad.text


def test_every_input_has_a_label(a) -> None:
    ticket_id = a.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    for path in ("/tickets/new", "/tickets", f"/tickets/{ticket_id}"):
        page = _controls(a.page(path).text)
        assert page.controls, path
        for control in page.controls:
            assert control.get("id") in page.label_for, (path, control)


def test_update_and_note_forms_change_the_ticket(env, a) -> None:
    ticket_id = a.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    moved = a.form(
        f"/tickets/{ticket_id}",
        {"status": "pending", "priority": "urgent", "category": "billing", "assignee": "kim"},
    )
    assert moved.status_code == 303
    assert moved.headers["Location"].endswith(f"/l/{a.launch_id}/tickets/{ticket_id}?ok=pending")
    noted = a.form(
        f"/tickets/{ticket_id}/notes",
        {"body": "Called, no answer", "channel": "phone", "direction": "outbound"},
    )
    assert noted.status_code == 303
    assert noted.headers["Location"].endswith(f"/tickets/{ticket_id}?ok=note#notes")
    detail = a.get(f"/tickets/{ticket_id}").json()
    assert (detail["status"], detail["priority"], detail["assignee"]) == (
        "pending",
        "urgent",
        "kim",
    )
    assert [n["body"] for n in detail["notes"]] == ["Called, no answer"]
    unassign = a.form(f"/tickets/{ticket_id}", {"status": "pending", "assignee": ""})
    assert unassign.status_code == 303
    assert a.get(f"/tickets/{ticket_id}").json()["assignee"] is None


def test_disallowed_transition_is_shown_on_the_page(a) -> None:
    ticket_id = a.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    a.patch(f"/tickets/{ticket_id}", {"status": "closed"})
    response = a.form(f"/tickets/{ticket_id}", {"status": "open"})
    assert response.status_code == 409
    assert "cannot become open" in response.text
    assert "Add a note" not in response.text  # a closed ticket offers no note form


def test_forms_without_the_csrf_token_are_refused(env, a, b) -> None:
    ticket_id = a.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    with env.db() as db:
        before = db.query(Ticket).count()
    for path, data in (
        ("/tickets", {"subject": "s", "category": "billing"}),
        (f"/tickets/{ticket_id}", {"status": "closed"}),
        (f"/tickets/{ticket_id}/notes", {"body": "n"}),
    ):
        missing = a.form(path, data, with_csrf=False)
        forged = a.form(path, {**data, "csrf_token": b.csrf}, with_csrf=False)
        for response in (missing, forged):
            assert response.status_code == 403
            assert "text/html" in response.headers["Content-Type"]
    with env.db() as db:
        assert db.query(Ticket).count() == before
    assert a.get(f"/tickets/{ticket_id}").json()["status"] == "open"


def test_other_ehr_ticket_page_is_not_found(a, b) -> None:
    theirs = b.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    assert a.page(f"/tickets/{theirs}").status_code == 404
    assert a.form(f"/tickets/{theirs}/notes", {"body": "n"}).status_code == 404
    assert a.form(f"/tickets/{theirs}", {"status": "closed"}).status_code == 404
    assert b.get(f"/tickets/{theirs}").json()["status"] == "open"


def test_every_change_is_confirmed_on_the_page_it_lands_on(a) -> None:
    ticket_id = a.post("/tickets", {"subject": "Bill question", "category": "billing"}).json()["id"]
    saved = a.form(f"/tickets/{ticket_id}", {"status": "open", "priority": "high"})
    page = a.http.get(a.base + saved.headers["Location"], timeout=10)
    assert f"Ticket #{ticket_id} saved: open, high priority, unassigned." in page.text
    resolved = a.form(f"/tickets/{ticket_id}", {"status": "open", "resolve": "1"})
    assert resolved.headers["Location"].endswith("?ok=resolved")
    page = a.http.get(a.base + resolved.headers["Location"], timeout=10)
    assert f"Ticket #{ticket_id} is now resolved." in page.text
    noted = a.form(
        f"/tickets/{ticket_id}/notes",
        {"body": "Left a voicemail", "channel": "phone", "direction": "outbound"},
    )
    page = a.http.get(a.base + noted.headers["Location"].split("#")[0], timeout=10)
    assert "Note added: phone call to the patient." in page.text
    # The word in the URL names what happened; the sentence comes from the row.
    assert "saved" not in a.page(f"/tickets/{ticket_id}?ok=bogus").text.split("</nav>", 1)[1]


@pytest.mark.parametrize(
    ("kind", "channel", "direction"),
    [
        ("call", "phone", "outbound"),  # "Log a call" from a call list: a call we made
        ("called", "phone", "inbound"),
        ("message", "sms", "outbound"),
        ("internal", "internal", "internal"),
        ("", "internal", "internal"),
    ],
)
def test_a_new_note_defaults_to_how_it_was_reached(
    a, kind: str, channel: str, direction: str
) -> None:
    ticket_id = a.post("/tickets", {"subject": "s", "category": "billing"}).json()["id"]
    page = a.page(f"/tickets/{ticket_id}?note={kind}").text
    chosen = dict(
        re.findall(
            r'<select id="nn-(channel|direction)".*?<option value="([^"]+)" selected', page, re.S
        )
    )
    assert chosen == {"channel": channel, "direction": direction}


def test_ticket_pages_name_priorities_statuses_and_categories_in_words(a) -> None:
    ticket_id = a.post(
        "/tickets", {"subject": "s", "category": "clinical-question", "priority": "urgent"}
    ).json()["id"]
    page = a.page(f"/tickets/{ticket_id}").text
    assert 'data-testid="priority-badge">Urgent<' in page
    assert 'data-testid="status-badge">Open<' in page
    assert "Clinical question" in page
    assert "!" not in re.search(r'data-testid="priority-badge">([^<]*)<', page)[1]  # type: ignore[index]
    listing = a.page("/tickets").text
    assert "Urgent" in listing and "Clinical question" in listing
    # The EHR of this launch does not answer: the patient is shown by reference, linked.
    assert 'data-testid="patient-link">Patient/p1<' in page
