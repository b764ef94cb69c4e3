"""Names of the people and places a resource refers to: the one rule, and what is missing.

A Reference names its target in two ways: the target itself (contained in the resource,
`_include`d in the search, or read separately) and the reference's own `display`. The
target's name wins (it is current; a display is a copy made when the reference was
written). A real SMART on FHIR server was seen to send no `display` at all, so without the
target the help desk would show `Practitioner/a9a4...`; `unresolved_references` lists
exactly those targets, grouped by type, so the caller reads them in one search per type
(`Practitioner?_id=a,b`) and passes them back in `included`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_mappers.fhirutil import (
    Ref,
    ResourceIndex,
    concept_text,
    get_dict,
    get_list,
    get_str,
    get_str_list,
    human_name,
    index_resources,
    reference_of,
)

# Targets CareDesk shows by name and a caller can read: the people and places of a visit,
# and a coverage's payor.
NAMED_TYPES = (
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Organization",
    "HealthcareService",
    "RelatedPerson",
)

Included = Mapping[str, Mapping[str, Any]]


def contained_target(container: object, ref: Ref) -> Mapping[str, Any] | None:
    """The resource `#id` points at inside `container.contained`, if it is there."""
    if not ref.contained:
        return None
    for item in get_list(container, "contained"):
        if get_str(item, "id") == ref.id:
            return item
    return None


def target_of(
    reference: object, included: Included, *, container: object = None
) -> Mapping[str, Any] | None:
    """The resource a Reference points at: contained in `container`, else in `included`
    (keyed `Type/id`; absolute and versioned references find it too)."""
    ref = reference_of(reference)
    return None if ref is None else resolve(ref, included, container=container)


def resolve(ref: Ref, included: Included, *, container: object = None) -> Mapping[str, Any] | None:
    """`target_of` for a reference its caller has already parsed."""
    if ref.contained:
        return contained_target(container, ref)
    found = included.get(ref.key)
    if found is None and isinstance(included, ResourceIndex):
        included.missed.add(ref.key)
    return found


def resource_name(resource: object, included: Included) -> str | None:
    """A person's or place's name from the resource itself; None when it has none.

    A PractitionerRole names no one itself: its practitioner does (often `_include`d
    beside it), else the practitioner reference's display, else the role's code.
    """
    if type(resource) is not dict and not isinstance(resource, Mapping):
        return None
    rtype = get_str(resource, "resourceType")
    if rtype in ("Practitioner", "Patient", "RelatedPerson"):
        return human_name(resource.get("name"))
    if rtype == "PractitionerRole":
        practitioner = get_dict(resource, "practitioner")
        target = target_of(practitioner, included, container=resource)
        # Only a person names a role: a role pointing at a role (or at itself) would loop.
        person = get_str(target, "resourceType") != "PractitionerRole"
        name = resource_name(target, included) if target is not None and person else None
        return (
            name
            or get_str(practitioner, "display")
            or concept_text(next(iter(get_list(resource, "code")), None))
        )
    aliases = get_str_list(resource, "alias")
    return get_str(resource, "name") or (aliases[0] if aliases else None)


def reference_name(
    reference: object, included: Included, *, container: object = None
) -> str | None:
    """The name to show for a Reference: its target's own name (contained in `container`
    or in `included`), else its `display`; None when neither is known.

    Never the reference string itself: a UI that has no name says so in words.
    """
    return name_of(reference, target_of(reference, included, container=container), included)


def name_of(reference: object, target: object, included: Included) -> str | None:
    """`reference_name` for a caller that has already found the target (or None)."""
    name = resource_name(target, included) if target is not None else None
    return name or get_str(reference, "display")


def _named_references(resource: Mapping[str, Any]) -> Iterable[object]:
    rtype = get_str(resource, "resourceType")
    if rtype == "Appointment":
        for part in get_list(resource, "participant"):
            yield part.get("actor")
    elif rtype == "Coverage":
        yield from get_list(resource, "payor")


def unresolved_references(
    resources: Iterable[object],
    included: Included | Iterable[object] = (),
) -> dict[str, list[str]]:
    """The targets whose names are still unknown, as `{type: [id, ...]}` (sorted, once each).

    `resources` are Appointments (their participants' actors) and Coverages (their
    payors); anything else is ignored. A reference counts as unresolved when it has no
    `display`, no contained or included target with a name, and points at a type in
    NAMED_TYPES (patients are read by the context anyway; contained and `urn:` targets
    cannot be read). A PractitionerRole that is included but whose practitioner is not
    (and has no display) yields that Practitioner: call again after each read until the
    result is empty (at most two rounds).
    """
    index = included if isinstance(included, Mapping) else index_resources(included)
    wanted: dict[str, set[str]] = {}

    def check(reference: object, container: object, depth: int = 0) -> None:
        ref = reference_of(reference)
        if ref is None or ref.type not in NAMED_TYPES or ref.contained:
            return
        if get_str(reference, "display"):
            return
        target = target_of(reference, index, container=container)
        if target is None:
            wanted.setdefault(ref.type, set()).add(ref.id)
        elif get_str(target, "resourceType") == "PractitionerRole" and depth == 0:
            # The role's code ("Family medicine") is a fallback, not the person's name.
            check(get_dict(target, "practitioner"), target, depth + 1)

    for resource in resources:
        if not isinstance(resource, Mapping):
            continue
        for reference in _named_references(resource):
            check(reference, resource)
    return {rtype: sorted(ids) for rtype, ids in sorted(wanted.items())}
