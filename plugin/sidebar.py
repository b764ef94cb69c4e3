"""The sidebar: what a launched user sees. (Grows into the full help-desk view.)"""

from __future__ import annotations

import logging

from flask import Blueprint, render_template

from plugin import ehr
from plugin.audit import audit
from plugin.launch import current_launch
from smart_launch.errors import FhirError, SmartError

bp = Blueprint("sidebar", __name__)
log = logging.getLogger("caredesk.sidebar")


def _display_name(patient: dict) -> str:  # type: ignore[type-arg]
    names = patient.get("name") or []
    for name in names:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            given = " ".join(str(g) for g in name.get("given") or [])
            return f"{given} {name.get('family', '')}".strip() or "(no name on file)"
    return "(no name on file)"


@bp.get("/l/<launch_id>/")
def home(launch_id: str) -> str:
    launch = current_launch(launch_id)
    reg = ehr.to_registration(launch.registration)
    patient_name = None
    problem = None
    if launch.patient_ref:
        try:
            conf = ehr.configuration(reg)
            with_client = ehr.fhir_client(launch, reg, conf)
            patient = with_client.read("Patient", launch.patient_ref.split("/", 1)[1])
            patient_name = _display_name(patient)
            audit("read", launch=launch, entity=launch.patient_ref)
        except FhirError as exc:
            log.info("patient read failed: HTTP %s", exc.status)
            problem = exc.message
        except SmartError as exc:
            problem = exc.message
    return render_template(
        "sidebar_min.html",
        launch=launch,
        patient_name=patient_name,
        problem=problem,
        missing_scopes=(launch.context or {}).get("missing_scopes") or [],
    )
