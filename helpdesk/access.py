"""Which patient a launch may see and act on: the one rule every route goes through.

A launch with patient context (an EHR launch from a chart) is bound to that patient for
its life: CareDesk's own data about any other patient is invisible to it, and no action
of it may name another patient. A launch without patient context (the scheduler's board,
the help-desk queue) names the patient itself.
"""

from __future__ import annotations

from helpdesk.errors import AppError
from helpdesk.models import LaunchSession


class NoPatient(AppError):
    status = 422
    code = "no_patient"


class OtherPatient(AppError):
    status = 403
    code = "other_patient"


def patient_for(launch: LaunchSession, requested: str | None) -> str:
    """The patient a new ticket or task is about.

    A launch with patient context works on that patient only (the EHR granted access to
    that chart); a launch without one (the help-desk queue) names the patient itself."""
    if launch.patient_ref:
        if requested and requested != launch.patient_ref:
            raise OtherPatient(
                "This CareDesk window belongs to another patient's chart; open that "
                "patient's chart in the EHR to work on their requests."
            )
        return launch.patient_ref
    if not requested:
        raise NoPatient("Name the patient (`Patient/<id>`): this launch has no patient context.")
    return requested
