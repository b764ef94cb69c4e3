"""The one rule on retrying a task (helpdesk.tasks.can_retry): the sidebar, the jobs page
and the retry endpoint all read it, so a Retry is offered and accepted only where it can
succeed, and a lasting failure says what to do instead."""

from __future__ import annotations

import pytest

from helpdesk.models import CareTask
from helpdesk.tasks import GAVE_UP, can_retry, lasting_failure, retry_refusal
from plugin.tasktext import is_lasting

TEMPORARY = f"{GAVE_UP} 5 attempts: the EHR answered 503"


@pytest.mark.parametrize(
    ("kind", "status", "error", "retry", "instead"),
    [
        ("reminder", "failed", TEMPORARY, True, None),
        ("referral", "needs-authorization", "grant ended", True, None),
        ("reminder", "failed", "The patient cannot be reached by SMS or email.", False,
         "Call the patient instead"),
        ("follow-up", "failed", "The patient asked not to be texted.", False,
         "Change the channel on the patient's page"),
        ("referral", "failed", "ServiceRequest.subject: patient not found", False,
         "queue a new referral"),
        ("survey-writeback", "failed", "403 Forbidden", False, "QuestionnaireResponses"),
        ("reminder", "failed", None, False, "Call the patient instead"),
        ("reminder", "queued", None, False, "this one is queued"),
        ("reminder", "done", TEMPORARY, False, "this one is done"),
        ("reminder", "cancelled", None, False, "this one is cancelled"),
    ],
)  # fmt: skip
def test_retry_is_for_temporary_failures_and_lasting_ones_say_what_instead(
    kind: str, status: str, error: str | None, retry: bool, instead: str | None
) -> None:
    task = CareTask(kind=kind, status=status, last_error=error)
    assert can_retry(status, error) is retry
    refusal = retry_refusal(task)
    assert (refusal is None) is retry
    if instead is not None:
        assert refusal is not None and instead in refusal
    # The sidebar reads the same rule from its task rows (dicts).
    lasting = status == "failed" and not retry
    assert lasting_failure(task) is lasting
    assert is_lasting({"kind": kind, "status": status, "last_error": error}) is lasting
