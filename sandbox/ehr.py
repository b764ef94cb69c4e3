"""The EHR page at /ehr: pick a user and a patient, see a chart, CareDesk in the sidebar.

Every page view makes a fresh launch, as a real EHR does each time it opens an app.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from flask.wrappers import Response

from sandbox.auth import create_launch, display_name, users
from sandbox.clients import Client
from sandbox.state import SandboxState
from sandbox.store import parse_criteria
from sandbox.web import state

bp = Blueprint("ehr", __name__)

MRN_HINT = "MR"  # identifier type code for a medical record number (v2-0203)


def _launch_clients(st: SandboxState) -> list[Client]:
    return [c for c in st.iter_clients() if c.launch_url]


def _pick_client(st: SandboxState) -> Client | None:
    clients = _launch_clients(st)
    wanted = request.args.get("client")
    for client in clients:
        if client.client_id == wanted:
            return client
    return clients[0] if clients else None


def _age(birth: str, today: dt.date) -> str:
    try:
        born = dt.date.fromisoformat(birth[:10])
    except ValueError:
        return ""
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return f"{years} y"


def _mrn(patient: dict[str, Any]) -> str:
    for ident in patient.get("identifier") or []:
        codings = ((ident.get("type") or {}).get("coding")) or []
        if any(c.get("code") == MRN_HINT for c in codings):
            return str(ident.get("value", ""))
    idents = patient.get("identifier") or []
    return str(idents[0].get("value", "")) if idents else ""


def _phone(patient: dict[str, Any]) -> str:
    for tel in patient.get("telecom") or []:
        if tel.get("system") == "phone":
            return str(tel.get("value", ""))
    return ""


def _header(st: SandboxState, patient: dict[str, Any]) -> dict[str, str]:
    return {
        "id": str(patient.get("id")),
        "name": display_name(patient),
        "birthDate": str(patient.get("birthDate", "")),
        "age": _age(str(patient.get("birthDate", "")), st.today()),
        "gender": str(patient.get("gender", "")),
        "mrn": _mrn(patient),
        "phone": _phone(patient),
    }


def _chart(st: SandboxState, patient_id: str) -> dict[str, list[dict[str, str]]]:
    """A few visits and coverages for the chart body (the EHR's own view, not FHIR)."""
    visits = []
    for rid in st.store.search(
        "Appointment", parse_criteria("Appointment", [("patient", patient_id)])
    ):
        appt = st.store.get("Appointment", rid) or {}
        visits.append(
            {
                "start": str(appt.get("start", "")).replace("T", " ")[:16],
                "status": str(appt.get("status", "")),
                "what": str(
                    (appt.get("serviceType") or [{}])[0].get("text") or appt.get("description", "")
                ),
            }
        )
    visits.sort(key=lambda v: v["start"], reverse=True)
    coverage = []
    for rid in st.store.search(
        "Coverage", parse_criteria("Coverage", [("beneficiary", patient_id)])
    ):
        cov = st.store.get("Coverage", rid) or {}
        payors = cov.get("payor") or [{}]
        period = cov.get("period") or {}
        coverage.append(
            {
                "payor": str(payors[0].get("display") or payors[0].get("reference") or "?"),
                "status": str(cov.get("status", "")),
                "period": f"{period.get('start', '')} to {period.get('end', '')}",
            }
        )
    return {"visits": visits[:8], "coverage": coverage}


@bp.get("/")
def home() -> Response:
    return redirect(url_for("ehr.ehr"))  # type: ignore[return-value]


@bp.get("/ehr")
def ehr() -> str:
    st = state()
    all_users = users(st)
    user = next((u for u in all_users if u["id"] == request.args.get("user")), None)
    client = _pick_client(st)
    patients = [_header(st, p) for p in st.store.all_of("Patient")]
    patients.sort(key=lambda p: p["name"].lower())
    mode = request.args.get("mode", "sidebar")
    patient = None
    chart: dict[str, list[dict[str, str]]] = {"visits": [], "coverage": []}
    launch_url = None
    if user is not None and client is not None:
        pid = request.args.get("patient")
        resource = st.store.get("Patient", pid) if pid else None
        if resource is not None:
            patient = _header(st, resource)
            chart = _chart(st, patient["id"])
            launch_url = create_launch(
                st, client.client_id, patient=patient["id"], user=user["fhirUser"], intent=None
            )["url"]
        elif mode == "board":
            # The scheduler's day board: an EHR launch with no patient in context.
            launch_url = create_launch(
                st, client.client_id, user=user["fhirUser"], intent="scheduler-board"
            )["url"]
    return render_template(
        "ehr.html",
        users=all_users,
        user=user,
        patients=patients,
        patient=patient,
        clients=_launch_clients(st),
        client=client,
        launch_url=launch_url,
        chart=chart,
        mode=mode,
        profile=st.profile.name,
    )


@bp.get("/ehr/launch")
def full_tab() -> Response | tuple[str, int]:
    """Full-tab launch: a new launch, then straight to the app (it shows its own banner)."""
    st = state()
    client = _pick_client(st)
    if client is None:
        return render_template("error.html", message="No client with a launch_url."), 400
    user = next((u for u in users(st) if u["id"] == request.args.get("user")), None)
    pid = request.args.get("patient") or None
    if pid is not None and st.store.get("Patient", pid) is None:
        return render_template("error.html", message="Unknown patient."), 404
    launch = create_launch(
        st,
        client.client_id,
        patient=pid,
        user=user["fhirUser"] if user else None,
        intent=None if pid else "scheduler-board",
        need_patient_banner=True,
    )
    return redirect(launch["url"], code=302)  # type: ignore[return-value]
