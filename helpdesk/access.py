"""Which patients a launch may see and act on: the one rule every service query applies.

CareDesk's own rows (tickets, notes, tasks, survey invitations and answers, messages)
follow the EHR's grant, so CareDesk never shows what the EHR itself would refuse:

- A launch with patient context (an EHR launch from a chart) is bound to that patient
  for its life: rows about any other patient are invisible to it, and no action of it may
  name another patient.
- A launch without patient context sees every patient of its EHR registration only when
  its grant reaches every patient: a ``user/`` or ``system/`` scope that reads Patient
  (or ``*``). With ``patient/`` scopes only (a standalone launch on a server without a
  patient picker) it sees no patient's rows at all, only rows about no patient.
- Rows of another EHR registration are never visible.

Two answers, on purpose: a row that exists but is out of scope is *not found* (404),
exactly like a row that does not exist, so ids cannot be probed; a request that names
another patient outright (``?patient=``, a form field, a page for that patient) is
*forbidden* (403) with a sentence that says why.

Services take a :class:`PatientScope` (``scope_of(launch)``; command-line tools and jobs,
which act for the whole registration, use :meth:`PatientScope.whole_registration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from helpdesk.errors import AppError, Forbidden, NotFound
from helpdesk.models import LaunchSession
from smart_launch.scopes import parse_resource_scope


class NoPatient(AppError, status=422, code="no_patient"):
    """The action needs a patient and the launch has none, nor does the request name one."""


class OtherPatient(Forbidden, code="other_patient"):
    """The request names a patient the launch may not see."""


_BOUND = (
    "This CareDesk window belongs to another patient's chart; open that patient's chart "
    "in the EHR to work on their requests."
)
_NO_GRANT = (
    "The EHR granted this session access to its launch patient only, and it has none: "
    "open CareDesk from the patient's chart."
)


def grant_reaches_every_patient(scope: str | None) -> bool:
    """True when a granted scope string reads Patient data beyond one patient: a
    ``user/`` or ``system/`` resource scope on Patient or ``*`` with read or search."""
    for word in (scope or "").split():
        parsed = parse_resource_scope(word)
        if (
            parsed is not None
            and parsed.context in ("user", "system")
            and parsed.resource in ("Patient", "*")
            and parsed.perms & {"r", "s"}
        ):
            return True
    return False


@dataclass(frozen=True)
class PatientScope:
    """The rows a caller may see: one registration, and within it one patient, every
    patient, or (``patient_ref`` None and ``every_patient`` False) no patient."""

    registration_id: int
    patient_ref: str | None = None
    every_patient: bool = False

    @classmethod
    def whole_registration(cls, registration_id: int) -> PatientScope:
        """Every row of one registration (the command line, jobs, the integrator)."""
        return cls(registration_id=registration_id, every_patient=True)

    def sees(self, registration_id: int | None, patient_ref: str | None) -> bool:
        """Whether a row of ``registration_id`` about ``patient_ref`` is in scope."""
        if registration_id != self.registration_id:
            return False
        if self.patient_ref is not None:
            return patient_ref == self.patient_ref
        return self.every_patient or patient_ref is None

    def where(self, registration_col: Any, patient_col: Any) -> list[ColumnElement[bool]]:
        """The same rule as SQL conditions on a table's registration and patient columns."""
        clauses: list[ColumnElement[bool]] = [registration_col == self.registration_id]
        if self.patient_ref is not None:
            clauses.append(patient_col == self.patient_ref)
        elif not self.every_patient:
            clauses.append(patient_col.is_(None))
        return clauses

    def check(self, patient_ref: str) -> None:
        """Raise :class:`OtherPatient` (403) unless this scope may see ``patient_ref``."""
        if self.patient_ref is not None:
            if patient_ref != self.patient_ref:
                raise OtherPatient(_BOUND)
        elif not self.every_patient:
            raise OtherPatient(_NO_GRANT)


def scope_of(launch: LaunchSession) -> PatientScope:
    """What ``launch`` may see (see the module docstring)."""
    if launch.patient_ref:
        return PatientScope(registration_id=launch.registration_id, patient_ref=launch.patient_ref)
    return PatientScope(
        registration_id=launch.registration_id,
        every_patient=grant_reaches_every_patient(launch.scope_granted),
    )


def patient_for(launch: LaunchSession, requested: str | None) -> str:
    """The patient a new ticket, task or survey is about.

    A launch with patient context works on that patient only (the EHR granted access to
    that chart); a launch without one names the patient itself, within its grant."""
    scope = scope_of(launch)
    if scope.patient_ref is not None:
        if requested:
            scope.check(requested)
        return scope.patient_ref
    if not requested:
        raise NoPatient("Name the patient (`Patient/<id>`): this launch has no patient context.")
    scope.check(requested)
    return requested


class _PatientRow(Protocol):
    @property
    def registration_id(self) -> int: ...

    @property
    def patient_ref(self) -> str | None: ...


_R = TypeVar("_R", bound=_PatientRow)


def get_visible(
    db: Session, launch: LaunchSession, model: type[_R], row_id: int, *, missing: str
) -> _R:
    """The ``model`` row ``row_id`` if ``launch`` may see it, else NotFound(``missing``):
    the same answer for "absent", "another EHR's" and "another patient's", so ids are not
    probeable."""
    row = db.get(model, row_id)
    if row is None or not scope_of(launch).sees(row.registration_id, row.patient_ref):
        raise NotFound(missing)
    return row
