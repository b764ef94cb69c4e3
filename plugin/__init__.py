"""CareDesk: a SMART on FHIR help desk inside the EHR."""
